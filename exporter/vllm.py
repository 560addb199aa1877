"""vLLM's own metric names (V1 and legacy V0), declared once, and the fast parser that turns
a pod's /metrics page into `PodMetrics`. The simulator exposes these same names."""

from __future__ import annotations

# ---- V1 engine names (vLLM >= 0.12). Counters are declared without `_total`. ------------
NUM_REQUESTS_RUNNING = "vllm:num_requests_running"
NUM_REQUESTS_WAITING = "vllm:num_requests_waiting"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
LORA_REQUESTS_INFO = "vllm:lora_requests_info"
CACHE_CONFIG_INFO = "vllm:cache_config_info"
PREFIX_CACHE_QUERIES = "vllm:prefix_cache_queries"
PREFIX_CACHE_HITS = "vllm:prefix_cache_hits"
PROMPT_TOKENS = "vllm:prompt_tokens"
GENERATION_TOKENS = "vllm:generation_tokens"
REQUEST_SUCCESS = "vllm:request_success"
NUM_PREEMPTIONS = "vllm:num_preemptions"
TTFT = "vllm:time_to_first_token_seconds"
INTER_TOKEN_LATENCY = "vllm:inter_token_latency_seconds"
TIME_PER_OUTPUT_TOKEN = "vllm:request_time_per_output_token_seconds"
E2E_LATENCY = "vllm:e2e_request_latency_seconds"
QUEUE_TIME = "vllm:request_queue_time_seconds"
INFERENCE_TIME = "vllm:request_inference_time_seconds"
PREFILL_TIME = "vllm:request_prefill_time_seconds"
DECODE_TIME = "vllm:request_decode_time_seconds"
REQUEST_PROMPT_TOKENS = "vllm:request_prompt_tokens"
REQUEST_GENERATION_TOKENS = "vllm:request_generation_tokens"
REQUEST_MAX_TOKENS = "vllm:request_params_max_tokens"
ITERATION_TOKENS = "vllm:iteration_tokens_total"

# ---- legacy V0 names (older images such as the seed's llama2-with-lora:v0.2) -------------
LEGACY_GPU_CACHE_USAGE = "vllm:gpu_cache_usage_perc"
LEGACY_CPU_CACHE_USAGE = "vllm:cpu_cache_usage_perc"
LEGACY_NUM_REQUESTS_SWAPPED = "vllm:num_requests_swapped"
LEGACY_PREFIX_CACHE_QUERIES = "vllm:gpu_prefix_cache_queries"
LEGACY_PREFIX_CACHE_HITS = "vllm:gpu_prefix_cache_hits"
LEGACY_TIME_PER_OUTPUT_TOKEN = "vllm:time_per_output_token_seconds"
LEGACY_TIME_IN_QUEUE = "vllm:time_in_queue_requests"
LEGACY_AVG_PROMPT_THROUGHPUT = "vllm:avg_prompt_throughput_toks_per_s"
LEGACY_AVG_GENERATION_THROUGHPUT = "vllm:avg_generation_throughput_toks_per_s"

# ---- histogram buckets exactly as vLLM declares them (FACTS.md) --------------------------
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TOKEN_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                         2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                           40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """vLLM's 1-2-5 buckets up to `max_value` (request_prompt_tokens & co), e.g. 100 ->
    [1, 2, 5, 10, 20, 50, 100]."""
    out: list[int] = []
    exponent = 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exponent
            if v > max_value:
                return out
            out.append(v)
        exponent += 1
