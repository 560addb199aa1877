"""The balancer process's options, each declared once (name, default, bounds, help):
`BalancerOptions` for what `BalancerCore` wires, `ProxyOptions` and `ExtProcOptions` for the
two front ends, `BalancerCommand` for what only `llmtraffic balancer` reads (files, mode)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmtraffic.balancer.eventloop import CHOICES as LOOPS
from llmtraffic.balancer.policy.registry import POLICY_NAMES
from llmtraffic.balancer.policy.settings import PolicyConfig
from llmtraffic.contracts.flags import NOT_A_FLAG, Flag
from llmtraffic.contracts.options import (Listen, MaxLabelValues, PodsFile, ScrapeBudget,
    ScrapeInterval, ScrapeMaxBytes, ScrapeTimeout)

PolicyName = Literal[POLICY_NAMES]  # type: ignore[valid-type]


class BalancerOptions(BaseModel):
    """What every front end shares: the policy, scraping, breaker, limits, access log."""

    model_config = ConfigDict(extra="forbid")

    policy: PolicyName = Field("llm", description="llm (LLM-aware), round-robin (what a "
                               "Kubernetes Service does), random, least-request")
    policy_config: Annotated[PolicyConfig | None, NOT_A_FLAG] = None  # from --policy-config
    access_log: Annotated[str | None, Flag(metavar="PATH")] = Field(
        None, description="append one JSON line per request here ('-' for stdout); the "
        "exporter reads it with --format json")
    access_log_max_bytes: Annotated[int, Flag(metavar="BYTES")] = Field(
        0, ge=0, description="rotate the access log when it reaches this size: renamed to "
        "PATH.1 (older ones shifted, the oldest dropped) and a new one started, which the "
        "exporter follows; 0 never rotates")
    access_log_keep: Annotated[int, Flag(metavar="N")] = Field(
        3, ge=1, description="rotated access-log files kept (PATH.1 .. PATH.N)")
    scrape_interval: ScrapeInterval = 0.25  # routing reads it; see SCRAPE_CPU_S
    scrape_budget: ScrapeBudget
    scrape_timeout: ScrapeTimeout
    scrape_max_bytes: ScrapeMaxBytes
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1,
                                description="larger request bodies get 413")
    max_json_containers: Annotated[int, Flag(metavar="N")] = Field(
        16384, ge=1, description="arrays and objects one request body may hold (a chat "
        "message is one or two); more get 413 before the body is parsed")
    max_json_values: Annotated[int, Flag(metavar="N")] = Field(
        262144, ge=1, description="values (array items and object members) one request body "
        "may hold, e.g. a prompt of token ids; more get 413 before the body is parsed")
    max_prompts: Annotated[int, Flag(metavar="N")] = Field(
        2048, ge=1, description="prompts in one completions request (a list of strings); "
        "more get 413")
    max_messages: Annotated[int, Flag(metavar="N")] = Field(
        4096, ge=1, description="messages in one chat request; more get 413")
    breaker_failures: Annotated[int, Flag(metavar="N")] = Field(
        5, ge=1, description="failed answers in a row (5xx, failed connect) after which a "
        "pod's circuit opens: no requests go there for --breaker-cooldown, then one probe")
    breaker_cooldown: Annotated[float, Flag(metavar="SECONDS")] = Field(
        10.0, gt=0, description="how long an open circuit keeps its pod out")
    outlier_inflight_excess: Annotated[int, Flag(metavar="N")] = Field(
        2, ge=1, description="eject a pod (as an open circuit) when, for a second on end, "
        "this many more of our requests sent before its last scrape are in flight there than "
        "its fresh metrics say it runs or queues: it accepts work and does none")
    max_response_bytes: Annotated[int, Flag(metavar="BYTES")] = Field(
        64 * 1024 * 1024, ge=1, description="a pod's answer (a JSON body, or a whole stream) "
        "larger than this is cut: the client gets an error and the pod a breaker strike")
    max_stream_tokens: Annotated[int, Flag(metavar="N")] = Field(
        65536, ge=1, description="a stream may carry max_tokens (this when the request sets "
        "none) times n events, plus 64; a longer one is cut as an endless stream")
    drain_timeout: Annotated[float, Flag(metavar="SECONDS")] = Field(
        50.0, ge=0, description="on SIGTERM, requests in flight get this long to finish "
        "(keep it below the pod's terminationGracePeriodSeconds, 60 in deploy/); then a "
        "stream ends with an error event, another request gets 503, each logged 503 DT")
    max_queued: Annotated[int, Flag(metavar="N")] = Field(
        0, ge=0, description="llm policy: a request that finds its pool saturated (no "
        "pod with queue <= queue_threshold and KV cache <= kv_threshold) waits in the "
        "balancer, up to this many over all pools, and is let in highest priority first "
        "(InferenceObjective; first come first served within one) as a pod gets room. A "
        "full queue gives a higher priority the place of its lowest-priority, newest "
        "waiter, else answers 429 with Retry-After. Each waiter holds its body here (GIE "
        "bounds each priority at 5,000; e.g. 1000). 0 (the default, as GIE without its "
        "experimental flow-control layer) = no queue: when saturated, priority >= 0 is "
        "scheduled at once and negative priority is shed. The queue holds work a pod could "
        "batch whenever every pod's KV cache is over kv_threshold, so enable it for "
        "priorities, not for throughput")
    queue_timeout: Annotated[float, Flag(metavar="SECONDS")] = Field(
        60.0, gt=0, description="a request waits in the admission queue at most this long, "
        "then gets 503 with Retry-After (GIE flow control's default request TTL)")
    max_label_values: MaxLabelValues
    seed: int | None = Field(None, description="seed the policy's tie-breaks")


class ProxyOptions(BalancerOptions):
    """The OpenAI-compatible HTTP proxy (`balancer.proxy`)."""

    listen: Listen = "0.0.0.0:8080"
    # clients must send `Authorization: Bearer <key>` (read from --api-key-env's variable)
    api_key: Annotated[str | None, NOT_A_FLAG] = None
    # /metrics needs `Authorization: Bearer <token>` (from --metrics-token-env's variable)
    metrics_token: Annotated[str | None, NOT_A_FLAG] = None
    max_header_bytes: int = Field(8190, ge=1, description="a longer request line or header "
                                  "gets 400; at most 128 headers")
    retries: int = Field(2, ge=0, description="other pods tried when the picked pod cannot "
                         "be reached")
    connect_timeout: Annotated[float, NOT_A_FLAG] = Field(2.0, gt=0)
    idle_timeout: float = Field(120.0, gt=0, description="seconds a pod may stay silent "
                                "mid-request before the request fails")
    head_timeout: Annotated[float, Flag(metavar="SECONDS")] = Field(
        10.0, gt=0, description="a client connection whose first request head is not whole "
        "by then is closed (slow-header clients)")
    body_timeout: Annotated[float, Flag(metavar="SECONDS")] = Field(
        60.0, gt=0, description="a request body not received whole by then gets 408")
    keepalive_timeout: Annotated[float, Flag(metavar="SECONDS")] = Field(
        75.0, gt=0, description="an idle keep-alive client connection is closed after this")
    max_connections: Annotated[int | None, Flag(
        metavar="N", shown_default="(open-file limit - 64) / 2")] = Field(
        None, ge=1, description="client connections open at once; more are closed at accept "
        "and logged, so file descriptors remain for pods, scrapes and logs")
    stream_header_timeout: Annotated[float, Flag(metavar="SECONDS")] = Field(
        15.0, gt=0, description="a pod sends a stream's response head at once (vLLM does); "
        "one that takes longer gets a breaker strike and the request goes to another pod")


class ExtProcOptions(BalancerOptions):
    """The Envoy ext_proc endpoint picker (`balancer.extproc`)."""

    listen: Listen = "0.0.0.0:9002"
    health_listen: Listen = Field("0.0.0.0:9003",
                                  description="extproc: gRPC health service address")


class BalancerCommand(BaseModel):
    """What `llmtraffic balancer` alone reads: where resources and pods come from, which
    front end runs, where secrets are, which event loop."""

    model_config = ConfigDict(extra="forbid")

    config: Annotated[list[str], Flag(metavar="FILE")] = Field(
        [], description="YAML files with InferencePool, InferenceModel and LLMRoute objects "
        "(other kinds are skipped)")
    pods_file: PodsFile
    kubernetes: bool = Field(False, description="discover pools, models, routes and ready "
                             "pods from the Kubernetes API (in-cluster, else kubeconfig) "
                             "instead of files")
    namespace: str | None = Field(None, description="with --kubernetes: watch this namespace "
                                  "(default: the pod's own, else 'default')")
    mode: Literal["proxy", "extproc"] = Field(
        "proxy", description="proxy: OpenAI-compatible HTTP proxy; extproc: Envoy ext_proc "
        "endpoint picker (gRPC)")
    listen: Annotated[Listen | None, Flag(
        metavar="HOST:PORT", shown_default="0.0.0.0:8080 for proxy, 0.0.0.0:9002 for "
        "extproc")] = Field(None, description="where the proxy or the picker listens")
    policy_config_file: Annotated[str | None, Flag(name="--policy-config", metavar="FILE")] = \
        Field(None, description="YAML with the llm policy's weights and thresholds (fields of "
              "PolicyConfig: queue_weight, kv_weight, lora_weight, prefix_weight, "
              "queue_threshold, kv_threshold, ...)")
    api_key_env: Annotated[str, Flag(metavar="VAR")] = Field(
        "LLMTRAFFIC_API_KEY", description="if this environment variable is set, clients must "
        "send `Authorization: Bearer <its value>`")
    metrics_token_env: Annotated[str, Flag(metavar="VAR")] = Field(
        "LLMTRAFFIC_METRICS_TOKEN", description="if set, /metrics needs `Authorization: "
        "Bearer <its value>`")
    workers: Annotated[int | None, Flag(
        metavar="N", shown_default="the cores this process may run on, within its "
        "cgroup's CPU limit")] = Field(
        None, ge=1, description="proxy: serve from N worker processes on one port "
        "(SO_REUSEPORT), each with its own store, policy state, admission queue and "
        "in-flight counts (as N replicas would); they share their scrapes (each pod is "
        "scraped once a period for all of them, within one --scrape-budget); /metrics on "
        "any of them reports all N "
        "merged, the access log gets every worker's whole lines, SIGTERM drains them all. "
        "1 serves in this process. The ext_proc picker runs one process (Envoy keeps few "
        "long-lived streams to it, which one port cannot spread)")
    loop: Literal[LOOPS] = Field(  # type: ignore[valid-type]
        "auto", description="event loop: uvloop (about a quarter less CPU and added latency "
        "per request), asyncio, or auto = uvloop when installed for the proxy and asyncio "
        "for --mode extproc (gRPC's own)")
    check: bool = Field(False, description="load the resources and pods (--config with "
                        "--pods-file, or --kubernetes), print the resolved routing (hosts, "
                        "pools, endpoints, model targets and priorities, what was skipped) "
                        "and exit: 0 when usable, 1 otherwise (like nginx -t)")
    output: Literal["table", "json"] = Field("table", description="with --check: a table "
                                             "or JSON")
