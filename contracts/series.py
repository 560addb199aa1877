"""Every series llmtraffic emits, declared once. Collectors, rules, dashboards and tests
import these names; nothing else spells them.

Names are the *declared* names; prometheus_client exposes counters with `_total` and
histograms with `_bucket`/`_sum`/`_count` (see `exposed_names`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


# Latency buckets for our own histograms: vLLM's TTFT buckets (FACTS.md) so the two compare.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0,
                    80.0, 160.0, 320.0, 640.0)
#: Pick durations: the native llm policy picks in 5-50 µs, the Python one in 50-1000 µs.
OVERHEAD_BUCKETS = (0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
                    0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
#: Time in the balancer's admission queue: from a scrape interval to its 60 s default bound.
QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0,
                      120.0, 300.0)

# ---- token series from access logs (the names ASM uses) ---------------------------------
PROMPT_TOKENS = Series("asm_llm_proxy_prompt_tokens", "counter",
                       "Prompt tokens of LLM requests seen in access logs.", ("model",))
COMPLETION_TOKENS = Series("asm_llm_proxy_completion_tokens", "counter",
                           "Completion tokens of LLM requests seen in access logs.", ("model",))
REQUESTS = Series("asm_llm_proxy_requests", "counter",
                  "LLM requests seen in access logs.", ("model", "response_code"))
TTFT = Series("asm_llm_proxy_time_to_first_token_seconds", "histogram",
              "Time to first token as logged by the gateway.", ("model",), TTFT_BUCKETS)
DURATION = Series("asm_llm_proxy_request_duration_seconds", "histogram",
                  "Request duration as logged by the gateway.", ("model",), DURATION_BUCKETS)

# ---- exporter self-metrics ---------------------------------------------------------------
LINES_READ = Series("llmtraffic_exporter_lines", "counter",
                    "Access-log lines read.", ("file",))
PARSE_ERRORS = Series("llmtraffic_exporter_parse_errors", "counter",
                      "Access-log lines skipped, by reason.", ("reason",))
BYTES_READ = Series("llmtraffic_exporter_bytes", "counter", "Access-log bytes read.", ("file",))
ROTATIONS = Series("llmtraffic_exporter_rotations", "counter",
                   "Log rotations seen, by kind (rename, truncate).", ("kind",))
TAIL_LAG = Series("llmtraffic_exporter_tail_lag_bytes", "gauge",
                  "Bytes written to a followed file and not yet read.", ("file",))
TAIL_ERRORS = Series("llmtraffic_exporter_tail_errors", "counter",
                     "Trouble following the logs, by reason (read_error: a pass of the tail "
                     "loop failed and is retried; not_regular: a path that is not a regular "
                     "file was refused; rotated_between_polls: a file was replaced again "
                     "before it was read, so lines may be lost).", ("reason",))
ENRICHED_DROPPED = Series("llmtraffic_exporter_enriched_dropped", "counter",
                          "Enriched lines lost because the enriched log could not be written "
                          "(the token counters still counted them).")
HEALTHY = Series("llmtraffic_exporter_healthy", "gauge",
                 "1 while the exporter follows, counts and writes as it should; 0 when "
                 "/health answers 503 (a failing or stalled tail loop, a refused path, an "
                 "enriched log that cannot be written).")
RECORDS_WITHOUT_TOKENS = Series(
    "llmtraffic_exporter_records_without_tokens", "counter",
    "Records that name a model but carry no token count, by reason: error_response (not "
    "2xx: nothing was generated), empty (the token fields are there, empty), not_logged (no "
    "token field the mapping knows: the log format or the --format/--mapping misses them).",
    ("reason",))
RECORDS_RECEIVED = Series("llmtraffic_exporter_records_received", "counter",
                          "Access-log records received, by receiver (als, otlp_grpc, "
                          "otlp_http).", ("receiver",))
LABEL_OVERFLOW = Series("llmtraffic_exporter_label_overflow", "counter",
                        "Label values folded into 'other' by the cardinality cap.", ("label",))
USAGE_REJECTED = Series("llmtraffic_exporter_usage_rejected", "counter",
                        "Requests whose reported usage was beyond the per-request limit "
                        "(100,000,000 tokens per field) and was not counted.", ())
SCRAPES = Series("llmtraffic_exporter_scrapes", "counter",
                 "vLLM /metrics scrapes by outcome (ok, timeout, http_error, parse_error, "
                 "connect_error, too_large).", ("pod", "outcome"))
SCRAPE_DURATION = Series("llmtraffic_exporter_scrape_duration_seconds", "histogram",
                         "Time to fetch and parse one pod's /metrics.", (),
                         (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
SCRAPE_STALE_PODS = Series("llmtraffic_exporter_scrape_stale_pods", "gauge",
                           "Pods this process scrapes whose metrics are stale: no good scrape "
                           "within the store's stale-after, failing, or never scraped.", ())
SCRAPE_PERIOD = Series("llmtraffic_exporter_scrape_period_seconds", "gauge",
                       "Planned seconds between two scrapes of one pod: the scrape interval, "
                       "longer when the pod count exceeds the scrape budget or the process "
                       "fell behind.", ())

# ---- pod and pool state from the store (autoscaling signals) -----------------------------
POD_UP = Series("llmtraffic_pod_up", "gauge",
                "1 when the pod's last scrape succeeded and is fresh.", ("pool", "pod"))
POD_KV_USAGE = Series("llmtraffic_pod_kv_cache_usage_ratio", "gauge",
                      "KV-cache usage (0-1) from the pod's last scrape.", ("pool", "pod"))
POD_WAITING = Series("llmtraffic_pod_requests_waiting", "gauge",
                     "Waiting requests from the pod's last scrape.", ("pool", "pod"))
POD_RUNNING = Series("llmtraffic_pod_requests_running", "gauge",
                     "Running requests from the pod's last scrape.", ("pool", "pod"))
POD_METRICS_AGE = Series("llmtraffic_pod_metrics_age_seconds", "gauge",
                         "Age of the pod's last good scrape.", ("pool", "pod"))
POOL_READY_PODS = Series("llmtraffic_pool_ready_pods", "gauge",
                         "Pods in the pool with fresh metrics.", ("pool",))
POOL_KV_USAGE_MEAN = Series("llmtraffic_pool_kv_cache_usage_mean", "gauge",
                            "Mean KV-cache usage (0-1) over the pool's fresh pods.", ("pool",))
POOL_KV_USAGE_MAX = Series("llmtraffic_pool_kv_cache_usage_max", "gauge",
                           "Max KV-cache usage (0-1) over the pool's fresh pods.", ("pool",))
POOL_WAITING = Series("llmtraffic_pool_requests_waiting", "gauge",
                      "Waiting requests summed over the pool's fresh pods.", ("pool",))

# ---- balancer ----------------------------------------------------------------------------
BALANCER_REQUESTS = Series("llmtraffic_balancer_requests", "counter",
                           "Requests handled by the balancer.",
                           ("pool", "model", "target_model", "lb_policy", "response_code"))
BALANCER_PROMPT_TOKENS = Series("llmtraffic_balancer_prompt_tokens", "counter",
                                "Prompt tokens of requests routed by the balancer.",
                                ("pool", "model", "lb_policy"))
BALANCER_COMPLETION_TOKENS = Series("llmtraffic_balancer_completion_tokens", "counter",
                                    "Completion tokens of requests routed by the balancer.",
                                    ("pool", "model", "lb_policy"))
BALANCER_TTFT = Series("llmtraffic_balancer_time_to_first_token_seconds", "histogram",
                       "Time to first token measured at the balancer.",
                       ("pool", "model", "lb_policy"), TTFT_BUCKETS)
BALANCER_DURATION = Series("llmtraffic_balancer_request_duration_seconds", "histogram",
                           "Request duration measured at the balancer.",
                           ("pool", "model", "lb_policy"), DURATION_BUCKETS)
BALANCER_PICKS = Series("llmtraffic_balancer_picks", "counter",
                        "Endpoint picks by pod.", ("pool", "pod", "lb_policy"))
BALANCER_SHED = Series("llmtraffic_balancer_shed", "counter",
                       "Requests refused by the balancer (429 shed, 503 no endpoint).",
                       ("pool", "model", "reason"))
BALANCER_RETRIES = Series("llmtraffic_balancer_retries", "counter",
                          "Upstream attempts retried on another pod.", ("pool",))
BALANCER_CIRCUIT_OPENS = Series("llmtraffic_balancer_circuit_opens", "counter",
                                "Times a pod's circuit opened (failed answers in a row, or a "
                                "failed probe): no requests for the cooldown.", ("pool", "pod"))
BALANCER_CIRCUIT_OPEN = Series("llmtraffic_balancer_circuit_open", "gauge",
                               "1 while the pod's circuit is open or half-open (skipped by "
                               "every policy but for one probe request).", ("pool", "pod"))
BALANCER_INFLIGHT = Series("llmtraffic_balancer_inflight_requests", "gauge",
                           "Requests in flight per pod.", ("pool", "pod"))
BALANCER_CHARS_PER_TOKEN = Series("llmtraffic_balancer_chars_per_token", "gauge",
                                  "Prompt characters per prompt token the balancer learned "
                                  "for the target model from the pods' usage reports; its "
                                  "prompt-token estimates divide by it (4 until learned).",
                                  ("model",))
BALANCER_PICK_DURATION = Series("llmtraffic_balancer_pick_duration_seconds", "histogram",
                                "Time spent in the routing policy.", ("lb_policy",),
                                OVERHEAD_BUCKETS)
BALANCER_QUEUED = Series("llmtraffic_balancer_queued_requests", "gauge",
                         "Requests waiting in the balancer's admission queue (their pool "
                         "saturated), by priority.", ("pool", "priority"))
BALANCER_QUEUE_WAIT = Series("llmtraffic_balancer_queue_wait_seconds", "histogram",
                             "Time requests waited in the admission queue, by how the wait "
                             "ended (admitted, timed_out, left, displaced).",
                             ("pool", "outcome"), QUEUE_WAIT_BUCKETS)
DISCOVERY_API_UP = Series("llmtraffic_discovery_api_up", "gauge",
                          "1 while the balancer's Kubernetes list/watch calls reach the API "
                          "server; 0 while it routes on the last known state.")
DISCOVERY_ERRORS = Series("llmtraffic_discovery_errors", "counter",
                          "Failed Kubernetes list/watch calls by watched resource.",
                          ("resource",))
DISCOVERY_RELISTS = Series("llmtraffic_discovery_relists", "counter",
                           "Relists after a watch expired (410 Gone) by watched resource.",
                           ("resource",))

ALL: tuple[Series, ...] = tuple(v for v in dict(globals()).values() if isinstance(v, Series))


def exposed_names(series: Series) -> tuple[str, ...]:
    """Sample names prometheus_client exposes for a declared series."""
    if series.kind == "counter":
        return (series.name + "_total",)
    if series.kind == "histogram":
        return tuple(series.name + s for s in ("_bucket", "_sum", "_count"))
    return (series.name,)


def all_exposed_names() -> set[str]:
    return {n for s in ALL for n in exposed_names(s)}
