"""The Prometheus recording and alerting rules (prometheus/rules/*.yml), built from the same
query builders as the dashboards so rules, dashboards and exporter names cannot drift.
Recording rules follow `level:metric:operations` (vLLM's `vllm:` prefix becomes `vllm_`)."""

from __future__ import annotations

from typing import Any

import yaml

from llmtraffic.dashboards import queries as q
from llmtraffic.contracts import series as m
from llmtraffic.contracts import vllm as v

W = "5m"
QUANTILES = (0.5, 0.9, 0.99)

#: Documented alert thresholds (see the alert descriptions).
KV_SATURATED_RATIO = 0.9         # mean KV-cache usage of a pool
QUEUE_GROWING_MIN_WAITING = 10   # waiting requests in a pool, and still rising
TTFT_P90_SLO_SECONDS = 2.0       # p90 time to first token of a pool
PARSE_ERROR_RATIO = 0.01         # skipped access-log lines / lines read
SHED_RATIO = 0.05                # requests shed / requests handled, per pool

HEADER = ("# Generated from dashboards/rules.py by `llmtraffic dashboards --rules "
          "prometheus/rules`; do not edit by hand.\n")


def _rec(record: str, expr: str, **labels: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"record": record, "expr": expr}
    if labels:
        rule["labels"] = labels
    return rule


def _quantiles(record: str, bucket_sample: str, grp: str) -> list[dict[str, Any]]:
    return [_rec(record, q.quantile(x, bucket_sample, "", W, grp), quantile=str(x))
            for x in QUANTILES]


def record_name(level: str, metric: m.Series | str, operations: str) -> str:
    """`level:metric:operations` from a declared series (ours or vLLM's; `vllm:x` becomes
    `vllm_x` so the name keeps exactly two colons)."""
    base = metric.name if isinstance(metric, m.Series) else metric.replace(":", "_")
    return f"{level}:{base}:{operations}"


# Recording-rule names, used by the alerts below and checked by the tests.
HQ = "histogram_quantile_rate5m"
TTFT_BY_MODEL = record_name("model_name_quantile", v.TTFT, HQ)
TTFT_BY_POOL = record_name("pool_quantile", v.TTFT, HQ)
QUEUE_TIME_BY_POOL = record_name("pool", v.QUEUE_TIME, "mean5m")
KV_AVG_BY_POOL = record_name("pool", v.KV_CACHE_USAGE, "avg")
KV_MAX_BY_POOL = record_name("pool", v.KV_CACHE_USAGE, "max")
WAITING_BY_POOL = record_name("pool", v.NUM_REQUESTS_WAITING, "sum")
RUNNING_BY_POOL = record_name("pool", v.NUM_REQUESTS_RUNNING, "sum")
PREFIX_HIT_BY_POOL = record_name("pool", v.PREFIX_CACHE_HITS + "_per_queries", "ratio_rate5m")
BALANCER_TTFT_BY_POLICY = record_name("lb_policy_quantile", m.BALANCER_TTFT, HQ)
BALANCER_REQUESTS_BY_POOL = record_name("pool", m.BALANCER_REQUESTS, "rate5m")
BALANCER_SHED_BY_POOL = record_name("pool", m.BALANCER_SHED, "rate5m")


def _rate(level: str, metric: m.Series | str) -> dict[str, Any]:
    """`level:metric:rate5m` = per-second rate of the counter summed by `level`."""
    return _rec(record_name(level, metric, "rate5m"),
                q.rate_sum(q.counter(metric), "", W, level))


def recording_groups() -> list[dict[str, Any]]:
    gateway = [_rate("model", m.PROMPT_TOKENS), _rate("model", m.COMPLETION_TOKENS),
               _rate("model", m.REQUESTS)]
    vllm = [
        *_quantiles(TTFT_BY_MODEL, q.bucket(v.TTFT), "model_name"),
        *_quantiles(TTFT_BY_POOL, q.bucket(v.TTFT), "pool"),
        _rec(QUEUE_TIME_BY_POOL, q.queue_time_mean("", W, "pool")),
        _rec(KV_AVG_BY_POOL, q.kv_usage_agg("avg", "", "pool")),
        _rec(KV_MAX_BY_POOL, q.kv_usage_agg("max", "", "pool")),
        _rec(WAITING_BY_POOL, f"sum by (pool) ({q.gauge(v.NUM_REQUESTS_WAITING)})"),
        _rec(RUNNING_BY_POOL, f"sum by (pool) ({q.gauge(v.NUM_REQUESTS_RUNNING)})"),
        _rec(PREFIX_HIT_BY_POOL, q.prefix_hit_ratio("", W, "pool")),
        _rate("pool", v.PROMPT_TOKENS),
        _rate("pool", v.GENERATION_TOKENS),
    ]
    balancer = [
        _rate("lb_policy", m.BALANCER_REQUESTS),
        _rate("lb_policy", m.BALANCER_PROMPT_TOKENS),
        _rate("lb_policy", m.BALANCER_COMPLETION_TOKENS),
        *_quantiles(BALANCER_TTFT_BY_POLICY, q.bucket(m.BALANCER_TTFT), "lb_policy"),
        _rate("pool", m.BALANCER_REQUESTS),
        _rate("pool", m.BALANCER_SHED),
    ]
    return [
        {"name": "llmtraffic-gateway.rules", "rules": gateway},
        {"name": "llmtraffic-vllm.rules", "rules": vllm},
        {"name": "llmtraffic-balancer.rules", "rules": balancer},
    ]


def _alert(name: str, expr: str, for_: str, severity: str, summary: str,
           description: str) -> dict[str, Any]:
    return {"alert": name, "expr": expr, "for": for_, "labels": {"severity": severity},
            "annotations": {"summary": summary, "description": description}}


def alert_groups() -> list[dict[str, Any]]:
    pod_up = q.gauge(m.POD_UP)
    ready = q.gauge(m.POOL_READY_PODS)
    errors = q.rate_sum(q.counter(m.PARSE_ERRORS), "", W, "job, instance")
    lines = q.rate_sum(q.counter(m.LINES_READ), "", W, "job, instance")
    circuit_open = q.gauge(m.BALANCER_CIRCUIT_OPEN)
    api_up = q.gauge(m.DISCOVERY_API_UP)
    alerts = [
        _alert("LLMKVCacheSaturated", f"{KV_AVG_BY_POOL} > {KV_SATURATED_RATIO}", "10m",
               "warning",
               "KV cache of pool {{ $labels.pool }} is {{ $value | humanizePercentage }} full",
               f"Mean KV-cache usage over the pool's vLLM pods has stayed above "
               f"{KV_SATURATED_RATIO:.0%} for 10 minutes. New requests queue and running ones "
               "get preempted; add replicas or lower max_num_seqs/max_model_len."),
        _alert("LLMQueueGrowing",
               f"{WAITING_BY_POOL} > {QUEUE_GROWING_MIN_WAITING} and "
               f"deriv({WAITING_BY_POOL}[10m]) > 0", "10m", "warning",
               "Request queue of pool {{ $labels.pool }} keeps growing ({{ $value }} waiting)",
               f"More than {QUEUE_GROWING_MIN_WAITING} requests wait in the pool's vLLM queues "
               "and the number has been rising for 10 minutes: arrivals exceed what the pool "
               "serves. Scale the pool out or shed Sheddable traffic."),
        _alert("LLMTTFTHighP90", f'{TTFT_BY_POOL}{{quantile="0.9"}} > {TTFT_P90_SLO_SECONDS:g}',
               "10m", "warning",
               "p90 time to first token of pool {{ $labels.pool }} is {{ $value | "
               "humanizeDuration }}",
               f"The pool's p90 TTFT (5-minute window, from vLLM's own histogram) has been "
               f"over the {TTFT_P90_SLO_SECONDS:g} s SLO for 10 minutes. Check queue time and "
               "KV-cache usage on the overview dashboard; the SLO is a default, tune it to "
               "your models."),
        _alert("LLMScrapeTargetDown", 'up{job=~"vllm|llmtraffic"} == 0', "5m", "warning",
               "Prometheus cannot scrape {{ $labels.job }} target {{ $labels.instance }}",
               "The target has failed every scrape for 5 minutes: the pod is down, the "
               "prometheus.io/port annotation (vLLM) or the `metrics` port (llmtraffic) is "
               "wrong, or a NetworkPolicy blocks Prometheus."),
        _alert("LLMPodMetricsStale", f"{pod_up} == 0", "2m", "warning",
               "llmtraffic has no fresh metrics from pod {{ $labels.pod }} "
               "(pool {{ $labels.pool }})",
               "The exporter/balancer scraper could not read the pod's /metrics recently, "
               "so the balancer routes to it without knowing its queue and KV-cache state. "
               f"See {q.counter(m.SCRAPES)}{{outcome!=\"ok\"}} for the reason."),
        _alert("LLMPoolNoReadyPods", f"{ready} == 0", "1m", "critical",
               "Pool {{ $labels.pool }} has no pod with fresh metrics",
               "No pod of the pool has answered a metrics scrape recently; the balancer "
               "answers 503 for the pool's models. Check the vLLM pods and their readiness."),
        _alert("LLMVllmMetricsAbsent",
               "absent(" + q.sel(q.gauge(v.NUM_REQUESTS_RUNNING), 'job="vllm"') + ")",
               "10m", "warning", "Prometheus receives no vLLM metrics",
               "The `vllm` scrape job returns no vLLM series: no pod carries the "
               "prometheus.io/scrape annotation and an `app` label, or the annotated port is "
               "not vLLM's /metrics."),
        _alert("LLMExporterParseErrors", f"({errors}) / ({lines}) > {PARSE_ERROR_RATIO}",
               "10m", "warning",
               "Exporter {{ $labels.instance }} skips {{ $value | humanizePercentage }} of "
               "access-log lines",
               f"More than {PARSE_ERROR_RATIO:.0%} of the access-log lines read could not be "
               "parsed for 10 minutes, so token counters under-count. The access-log format "
               f"probably changed: compare {q.counter(m.PARSE_ERRORS)} by reason with the "
               "configured format."),
        _alert("LLMBalancerShedding",
               f"{BALANCER_SHED_BY_POOL} / {BALANCER_REQUESTS_BY_POOL} > {SHED_RATIO}", "5m",
               "warning",
               "Balancer sheds {{ $value | humanizePercentage }} of pool {{ $labels.pool }}'s "
               "requests",
               f"For 5 minutes the balancer has refused more than {SHED_RATIO:.0%} of the "
               "pool's requests (429 for Sheddable traffic on a saturated pool, 503 with no "
               f"endpoint). Scale the pool out; see {q.counter(m.BALANCER_SHED)} by reason."),
        _alert("LLMBalancerCircuitOpen", f"{circuit_open} == 1", "5m", "warning",
               "Balancer keeps pod {{ $labels.pod }} (pool {{ $labels.pool }}) out: its "
               "circuit has been open for 5 minutes",
               "The balancer's circuit breaker opened on this pod after failed answers in a "
               "row (5xx, failed connects, no response), and no probe request since (one per "
               "--breaker-cooldown) has succeeded. Meanwhile the balancer sends the pod nothing "
               "but those probes, so the pool serves with one pod fewer. Check the pod's logs "
               "and what it answers (5xx, crash loop, out of memory, a wedged engine) and "
               f"restart it if it does not recover; {q.counter(m.BALANCER_CIRCUIT_OPENS)} "
               "counts how often it re-opened. 5 minutes spans many cooldowns, so a short "
               "burst of errors that the breaker rides out by itself does not alert; on an "
               "idle pool the circuit also stays half-open until a request comes to probe "
               "with."),
        _alert("LLMDiscoveryAPIDown", f"{api_up} == 0", "5m", "warning",
               "Balancer {{ $labels.instance }} cannot reach the Kubernetes API",
               "For 5 minutes the balancer's list/watch calls have not reached the API "
               "server. It keeps routing on the last known pods and pools: that set is "
               "frozen, so new pods get no traffic and removed ones are still picked (until "
               "their circuit opens); if the API was never reached since start, it knows no "
               "pods at all. Check the network path and DNS to the API server, the API server "
               "itself, and the balancer ServiceAccount's RBAC (deploy/balancer/rbac.yaml); "
               f"see {q.counter(m.DISCOVERY_ERRORS)} by resource and the balancer log. 5 "
               "minutes rides out a control-plane restart or upgrade."),
    ]
    return [{"name": "llmtraffic.alerts", "rules": alerts}]


def render(groups: list[dict[str, Any]]) -> str:
    body = yaml.safe_dump({"groups": groups}, sort_keys=False, width=1 << 16,
                     allow_unicode=True, default_flow_style=False)
    return HEADER + body


def rule_files() -> dict[str, str]:
    """File name -> YAML text for prometheus/rules/."""
    return {"llmtraffic-recording.yml": render(recording_groups()),
            "llmtraffic-alerts.yml": render(alert_groups())}
