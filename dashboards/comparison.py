"""The "LLM load balancing comparison" dashboard (uid llmtraffic-comparison): LLM-aware vs
round-robin side by side — balancer series by their `lb_policy` label, vLLM series of two
pools (`pool_a` served LLM-aware, `pool_b` round-robin) on shared panels."""

from __future__ import annotations

from typing import Any

from llmtraffic.dashboards import queries as q
from llmtraffic.dashboards.panels import (RATIO, REQUESTS_PER_SECOND, SECONDS, SHORT, TOKENS_PER_SECOND,
                               Target, assemble, datasource_variable, new_board, query_variable,
                               stat_panel, timeseries_panel)
from llmtraffic.contracts import series as m
from llmtraffic.contracts import vllm as v

UID = "llmtraffic-comparison"
TITLE = "LLM load balancing comparison"

R = q.RATE
A, B = q.POOL_A, q.POOL_B


def variables() -> list[Any]:
    pools = f"label_values({q.gauge(v.NUM_REQUESTS_RUNNING)}, pool)"
    return [
        datasource_variable(),
        query_variable("pool_a", "Pool A (LLM-aware)", pools, multi=False,
                       description="The pool whose traffic the LLM-aware policy routes."),
        query_variable("pool_b", "Pool B (round-robin)", pools, multi=False,
                       description="The pool whose traffic round-robin routes."),
    ]


def _ab(build: Any, legend: str) -> list[Target]:
    """The same query for pool A and pool B, legends prefixed "A" / "B"."""
    return [Target(build(A), f"A {legend}"), Target(build(B), f"B {legend}")]


def headline() -> list[Any]:
    rng = q.RANGE
    ttft = q.quantile(0.9, q.bucket(m.BALANCER_TTFT), "", rng, "lb_policy")
    tokens = q.rate_sum(q.counter(m.BALANCER_COMPLETION_TOKENS), "", rng, "lb_policy")
    requests = q.rate_sum(q.counter(m.BALANCER_REQUESTS), "", rng, "lb_policy")
    queue = q.queue_time_mean("pool=~\"$pool_a|$pool_b\"", rng, "pool")
    note = " over the whole time range, per lb_policy."
    return [
        stat_panel("TTFT p90 over the range", "p90 time to first token at the balancer" + note,
                   [Target(ttft, "{{lb_policy}}", instant=True)], SECONDS),
        stat_panel("Completion tokens/s over the range", "Completion token throughput" + note,
                   [Target(tokens, "{{lb_policy}}", instant=True)], TOKENS_PER_SECOND),
        stat_panel("Requests/s over the range", "Requests handled by the balancer" + note,
                   [Target(requests, "{{lb_policy}}", instant=True)], REQUESTS_PER_SECOND),
        stat_panel("Queue time (mean) over the range",
                   "Mean vLLM queue time of pool A and pool B over the whole time range.",
                   [Target(queue, "{{pool}}", instant=True)], SECONDS),
    ]


def throughput() -> list[Any]:
    return [
        timeseries_panel(
            "Completion tokens/s by policy", "Completion tokens the balancer relayed per "
            "second, per lb_policy.",
            [Target(q.rate_sum(q.counter(m.BALANCER_COMPLETION_TOKENS), "", R, "lb_policy"),
                    "{{lb_policy}}")], TOKENS_PER_SECOND),
        timeseries_panel(
            "Generation tokens/s: A vs B", "Tokens vLLM generated per second in each pool.",
            _ab(lambda f: q.rate_sum(q.counter(v.GENERATION_TOKENS), f, R, "pool"),
                "{{pool}}"), TOKENS_PER_SECOND),
        timeseries_panel(
            "Picks per pod by policy", "How each policy spreads requests over the pods.",
            [Target(q.rate_sum(q.counter(m.BALANCER_PICKS), "", R, "lb_policy, pod"),
                    "{{lb_policy}} {{pod}}")], REQUESTS_PER_SECOND),
    ]


def latency() -> list[Any]:
    return [
        timeseries_panel(
            "TTFT by policy", "p50 / p90 time to first token measured at the balancer.",
            [Target(q.quantile(x, q.bucket(m.BALANCER_TTFT), "", R, "lb_policy"),
                    f"{{{{lb_policy}}}} p{round(x * 100)}") for x in (0.5, 0.9)], SECONDS),
        timeseries_panel(
            "TTFT p90: A vs B", "p90 time to first token from vLLM's histogram, per pool.",
            _ab(lambda f: q.ttft(0.9, f, R, "pool"), "{{pool}} p90"), SECONDS),
        timeseries_panel(
            "Queue time (mean): A vs B", "Mean time requests waited in vLLM queues, per pool.",
            _ab(lambda f: q.queue_time_mean(f, R, "pool"), "{{pool}}"), SECONDS),
    ]


def cache_utilization() -> list[Any]:
    return [
        timeseries_panel(
            "KV-cache usage (mean / max): A vs B",
            "Mean and max KV-cache usage over each pool's pods.",
            [*_ab(lambda f: q.kv_usage_agg("avg", f, "pool"), "{{pool}} mean"),
             *_ab(lambda f: q.kv_usage_agg("max", f, "pool"), "{{pool}} max")],
            RATIO, max_=1),
        timeseries_panel(
            "KV-cache imbalance (max − min): A vs B",
            "Spread of KV-cache usage across each pool's pods; a load-aware policy keeps it "
            "small.",
            _ab(lambda f: f"{q.kv_usage_agg('max', f, 'pool')} - "
                          f"{q.kv_usage_agg('min', f, 'pool')}", "{{pool}}"),
            RATIO, max_=1),
        timeseries_panel(
            "Prefix-cache hit rate: A vs B",
            "Prompt tokens served from the prefix cache / prompt tokens looked up.",
            _ab(lambda f: q.prefix_hit_ratio(f, R, "pool"), "{{pool}}"), RATIO, max_=1),
        timeseries_panel(
            "Waiting requests: A vs B", "Requests queued in each pool's vLLM engines.",
            _ab(lambda f: f"sum by (pool) ({q.sel(q.gauge(v.NUM_REQUESTS_WAITING), f)})",
                "{{pool}}"), SHORT, width=12),
        timeseries_panel(
            "Running requests: A vs B", "Requests in each pool's running batches.",
            _ab(lambda f: f"sum by (pool) ({q.sel(q.gauge(v.NUM_REQUESTS_RUNNING), f)})",
                "{{pool}}"), SHORT, width=12),
    ]


def build() -> dict[str, Any]:
    board = new_board(TITLE, UID, "LLM-aware routing vs round-robin: cache utilization, "
                      "queue time, token throughput and TTFT, by lb_policy and by pool.",
                      ["llmtraffic", "vllm", "llm", "load-balancing"], variables())
    return assemble(board, [
        ("Headline (whole time range)", headline()),
        ("Token throughput", throughput()),
        ("Latency", latency()),
        ("Cache utilization and saturation", cache_utilization()),
    ])
