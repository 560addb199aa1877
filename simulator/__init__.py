"""A vLLM-faithful simulator: engine model, real-time OpenAI server, virtual-time fleet."""
