"""The "LLM inference overview" dashboard (uid llmtraffic-overview): gateway traffic by model,
vLLM latency, saturation, prefix cache and LoRA, and the pool signals autoscalers read.
vLLM queries accept V1 and legacy names (`a or b`)."""

from __future__ import annotations

from typing import Any

from llmtraffic.dashboards import queries as q
from llmtraffic.dashboards.panels import (RATIO, REQUESTS_PER_SECOND, SECONDS, SHORT, TOKENS_PER_SECOND,
                               Target, assemble, datasource_variable, new_board, query_variable,
                               stat_panel, table_panel, timeseries_panel)
from llmtraffic.contracts import series as m
from llmtraffic.contracts import vllm as v

UID = "llmtraffic-overview"
TITLE = "LLM inference overview"

R, F, P, M = q.RATE, q.NS_POOL, q.POOL, q.MODEL


def variables() -> list[Any]:
    running = q.gauge(v.NUM_REQUESTS_RUNNING)
    in_namespace = q.sel(running, 'namespace=~"$namespace"')
    return [
        datasource_variable(),
        query_variable("namespace", "Namespace", f"label_values({running}, namespace)",
                       description="Namespace of the vLLM pods (scrape-job label)."),
        query_variable("pool", "Pool",
                       f"label_values({in_namespace}, pool)",
                       description="InferencePool: the vLLM pod's `app` label, the `pool` "
                                   "label of llmtraffic's own series."),
        query_variable("model", "Model",
                       f"label_values({q.counter(m.REQUESTS)}, model)",
                       description="Requested model as logged by the gateway (LoRA adapters "
                                   "and InferenceModel names included)."),
    ]


def traffic() -> list[Any]:
    requests = q.counter(m.REQUESTS)
    errors = q.rate_sum(requests, q.join(M, 'response_code!~"2.."'), R, "model")
    total = q.rate_sum(requests, M, R, "model")
    return [
        timeseries_panel(
            "Requests by model", "LLM requests per second seen in the gateway access logs.",
            [Target(total, "{{model}}")], REQUESTS_PER_SECOND),
        timeseries_panel(
            "Token throughput by model",
            "Prompt and completion tokens per second, from the gateway access logs "
            "(asm_llm_proxy_* counters).",
            [Target(q.rate_sum(q.counter(m.PROMPT_TOKENS), M, R, "model"), "{{model}} prompt"),
             Target(q.rate_sum(q.counter(m.COMPLETION_TOKENS), M, R, "model"),
                    "{{model}} completion")],
            TOKENS_PER_SECOND),
        timeseries_panel(
            "Error ratio by model", "Share of requests answered with a non-2xx status.",
            [Target(q.ratio_or_zero(errors, total), "{{model}}")], RATIO),
        timeseries_panel(
            "vLLM prompt / generation throughput",
            "Tokens per second the vLLM engines prefilled (prompt) and generated, per pool.",
            [Target(q.rate_sum(q.counter(v.PROMPT_TOKENS), F, R, "pool"), "{{pool}} prompt"),
             Target(q.rate_sum(q.counter(v.GENERATION_TOKENS), F, R, "pool"),
                    "{{pool}} generation")],
            TOKENS_PER_SECOND, width=12),
        timeseries_panel(
            "Finished requests by reason",
            "Requests vLLM finished per second: stop (EOS), length (max_tokens), abort.",
            [Target(q.rate_sum(q.counter(v.REQUEST_SUCCESS), F, R, "finished_reason"),
                    "{{finished_reason}}")],
            REQUESTS_PER_SECOND, width=12),
    ]


def latency() -> list[Any]:
    return [
        timeseries_panel(
            "Time to first token (vLLM)",
            "p50 / p90 / p99 TTFT per pool from vLLM's histogram (includes queueing).",
            [Target(q.ttft(x, F, R, "pool"), f"{{{{pool}}}} p{round(x * 100)}")
             for x in (0.5, 0.9, 0.99)],
            SECONDS),
        timeseries_panel(
            "Time to first token by model (gateway)",
            "p90 TTFT per requested model as measured at the gateway/balancer.",
            [Target(q.quantile(0.9, q.bucket(m.TTFT), M, R, "model"), "{{model}} p90")],
            SECONDS),
        timeseries_panel(
            "Queue time (mean) per pod",
            "Mean time requests waited in each vLLM pod's queue before scheduling.",
            [Target(q.queue_time_mean(F, R, "pod"), "{{pod}}")], SECONDS),
        timeseries_panel(
            "Inter-token latency p90",
            "p90 time between output tokens per pool (V1 inter_token_latency, legacy "
            "time_per_output_token).",
            [Target(q.inter_token_latency(0.9, F, R, "pool"), "{{pool}} p90")],
            SECONDS, width=12),
        timeseries_panel(
            "End-to-end request latency",
            "p50 / p90 request latency per pool inside vLLM.",
            [Target(q.quantile(x, q.bucket(v.E2E_LATENCY), F, R, "pool"),
                    f"{{{{pool}}}} p{round(x * 100)}") for x in (0.5, 0.9)],
            SECONDS, width=12),
    ]


def saturation() -> list[Any]:
    per_pod = "namespace, pod"
    return [
        timeseries_panel(
            "KV-cache usage per pod",
            "Share of the pod's KV-cache blocks in use (V1 kv_cache_usage_perc, legacy "
            "gpu_cache_usage_perc). Near 100% requests queue or get preempted.",
            [Target(q.kv_usage_agg("max", F, "pod"), "{{pod}}")], RATIO, max_=1),
        timeseries_panel(
            "Requests running / waiting per pod",
            "Requests in the running batch and in the queue; swapped exists on legacy "
            "engines only.",
            [Target(f"sum by ({per_pod}) ({q.sel(q.gauge(v.NUM_REQUESTS_RUNNING), F)})",
                    "{{pod}} running"),
             Target(f"sum by ({per_pod}) ({q.sel(q.gauge(v.NUM_REQUESTS_WAITING), F)})",
                    "{{pod}} waiting"),
             Target(f"sum by ({per_pod}) "
                    f"({q.sel(q.gauge(v.LEGACY_NUM_REQUESTS_SWAPPED), F)})",
                    "{{pod}} swapped (legacy)")],
            SHORT),
        timeseries_panel(
            "Preemptions per pod",
            "Running requests preempted per second (KV cache ran out mid-generation).",
            [Target(q.rate_sum(q.counter(v.NUM_PREEMPTIONS), F, R, "pod"), "{{pod}}")],
            SHORT),
    ]


def cache_and_lora() -> list[Any]:
    lora = q.gauge(v.LORA_REQUESTS_INFO)
    return [
        timeseries_panel(
            "Prefix-cache hit rate by pool",
            "Prompt tokens served from the prefix cache / prompt tokens looked up.",
            [Target(q.prefix_hit_ratio(F, R, "pool"), "{{pool}}")], RATIO, width=12, max_=1),
        table_panel(
            "LoRA adapters per pod",
            f"Latest {lora} per pod: adapters in the running batch, adapters waiting for a "
            "slot, and the max_loras slot count.",
            [Target(f"topk by (pod) (1, {q.sel(lora, F)})")],
            hide=["Time", "Value", "__name__", "instance", "job", "namespace", "pool"],
            rename={"pod": "Pod", "running_lora_adapters": "Running adapters",
                    "waiting_lora_adapters": "Waiting adapters", "max_lora": "Max LoRA slots"}),
    ]


def autoscaling() -> list[Any]:
    return [
        stat_panel(
            "Ready pods", "Pods per pool whose metrics are fresh (llmtraffic exporter). Every "
            "exporter replica reports the same pods, so replicas are not added up.",
            [Target(f"max by (pool) ({q.sel(q.gauge(m.POOL_READY_PODS), P)})", "{{pool}}")],
            SHORT, height=8),
        timeseries_panel(
            "Pool KV-cache usage (mean / max)",
            "Mean and max KV-cache usage over each pool's fresh pods: scale out when the mean "
            "stays high.",
            [Target(f"max by (pool) ({q.sel(q.gauge(m.POOL_KV_USAGE_MEAN), P)})",
                    "{{pool}} mean"),
             Target(f"max by (pool) ({q.sel(q.gauge(m.POOL_KV_USAGE_MAX), P)})",
                    "{{pool}} max")],
            RATIO, width=6, max_=1),
        timeseries_panel(
            "Pool waiting requests", "Queued requests summed over each pool's fresh pods.",
            [Target(f"max by (pool) ({q.sel(q.gauge(m.POOL_WAITING), P)})", "{{pool}}")],
            SHORT, width=6),
        timeseries_panel(
            "Balancer in-flight per pod", "Requests the balancer has in flight to each pod.",
            [Target(f"sum by (pod) ({q.sel(q.gauge(m.BALANCER_INFLIGHT), P)})", "{{pod}}")],
            SHORT, width=6),
    ]


def pipeline() -> list[Any]:
    lines = q.rate_sum(q.counter(m.LINES_READ), "", R, "")
    errors = q.rate_sum(q.counter(m.PARSE_ERRORS), "", R, "")
    return [
        timeseries_panel(
            "Pod metrics age", "Age of each pod's last good /metrics scrape by llmtraffic; "
            "above ~2 s the balancer treats the pod's state as stale.",
            [Target(f"max by (pod) ({q.sel(q.gauge(m.POD_METRICS_AGE), P)})", "{{pod}}")],
            SECONDS, width=6),
        timeseries_panel(
            "llmtraffic scrapes by outcome", "vLLM /metrics scrapes per second by outcome.",
            [Target(q.rate_sum(q.counter(m.SCRAPES), "", R, "outcome"), "{{outcome}}")],
            SHORT, width=6),
        timeseries_panel(
            "Access-log lines read", "Access-log lines the exporter read per second.",
            [Target(lines, "lines/s")], SHORT, width=6),
        timeseries_panel(
            "Access-log parse error ratio",
            "Share of access-log lines the exporter skipped because it could not parse them.",
            [Target(f"({errors} or vector(0)) / {lines}", "skipped")], RATIO, width=6),
    ]


def build() -> dict[str, Any]:
    board = new_board(TITLE, UID, "vLLM fleet behind an LLM-aware gateway: traffic, latency, "
                      "saturation, cache/LoRA and autoscaling signals.",
                      ["llmtraffic", "vllm", "llm"], variables())
    return assemble(board, [
        ("Traffic", traffic()),
        ("Latency", latency()),
        ("Saturation", saturation()),
        ("Prefix cache and LoRA", cache_and_lora()),
        ("Autoscaling signals", autoscaling()),
        ("llmtraffic pipeline", pipeline()),
    ])
