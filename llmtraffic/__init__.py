"""llmtraffic: LLM-aware observability and load balancing for vLLM fleets."""

__version__ = "0.1.0"
