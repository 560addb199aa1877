"""prometheus/scrape.yml, the rules and every dashboard query on a real Prometheus.

No Kubernetes API server can run here, so the pods are loopback HTTP servers described to
Prometheus through file discovery with the `__meta_kubernetes_pod_*` labels Kubernetes pod
discovery would give them (dashboards.scrapeconfig.localize); the relabel rules of
scrape.yml run unchanged. The exporter and balancer are not wired yet, so their /metrics
page is a prometheus_client registry holding every series declared in contracts/series.py,
and the vLLM pods' pages hold every V1 series of contracts/vllm.py, all with the labels they
are declared with. The later end-to-end test swaps these pages for the real processes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from llmtraffic.dashboards import promql, queries, rules
from llmtraffic.dashboards.scrapeconfig import SCRAPE_CONFIG, LocalPod, localize
from llmtraffic.dashboards.targets import all_queries, variable_queries
from llmtraffic.contracts import series as m
from llmtraffic.contracts import vllm as v
from llmtraffic.harness.prometheus import PrometheusAPI, PrometheusServer

pytestmark = pytest.mark.e2e

MODEL = "meta-llama/Llama-2-7b-hf"
#: A value for each label the V1 families of contracts/vllm.py's table carry.
VLLM_LABEL_VALUES = {"model_name": MODEL, "engine": "0", "finished_reason": "stop",
                     "reason": "capacity", "max_lora": "4",
                     "running_lora_adapters": "sql-lora,tweet-summary",
                     "waiting_lora_adapters": "", "block_size": "16", "cache_dtype": "auto",
                     "enable_prefix_caching": "True", "gpu_memory_utilization": "0.9",
                     "num_cpu_blocks": "0", "num_gpu_blocks": "512"}


class VllmPage:
    """A V1 vLLM /metrics page; every scrape advances counters and observes histograms."""

    def __init__(self, ttft: float) -> None:
        self.registry = CollectorRegistry()
        self.ttft = ttft
        self.metrics = {}
        for family in v.families(legacy=False):
            name, kind, labels = family.name, family.exposed_type, list(family.labels)
            if kind == "gauge":
                metric = Gauge(name, family.help, labels, registry=self.registry)
            elif kind == "counter":
                metric = Counter(name, family.help, labels, registry=self.registry)
            else:
                metric = Histogram(name, family.help, labels, buckets=family.bounds(4096),
                                   registry=self.registry)
            child = metric.labels(**{label: VLLM_LABEL_VALUES[label] for label in labels})
            self.metrics[name] = (kind, child)
        Gauge("process_open_fds", "not a vLLM series", registry=self.registry).set(7)

    def __call__(self) -> bytes:
        for name, (kind, child) in self.metrics.items():
            if kind == "gauge":
                child.set(0.5 if name == v.KV_CACHE_USAGE else 3)
            elif kind == "counter":
                child.inc(10 if name != v.PREFIX_CACHE_HITS else 4)
            else:
                child.observe(self.ttft)
        return generate_latest(self.registry)


LABEL_VALUES = {"model": "m", "target_model": "m", "response_code": "200",
                "reason": "invalid_json", "kind": "rename", "file": "access.log",
                "label": "model", "outcome": "ok", "resource": "pods", "receiver": "als",
                "priority": "0"}


class LlmtrafficPage:
    """Every series of contracts/series.py, for pool-a (lb_policy llm) and pool-b
    (round-robin); counters advance and histograms observe on every scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.children: list[tuple[str, object]] = []
        for series in m.ALL:
            if series.kind == "gauge":
                metric = Gauge(series.name, series.help, series.labels, registry=self.registry)
            elif series.kind == "counter":
                metric = Counter(series.name, series.help, series.labels,
                                 registry=self.registry)
            else:
                metric = Histogram(series.name, series.help, series.labels,
                                   buckets=series.buckets, registry=self.registry)
            for pool, pod, policy in (("pool-a", "vllm-a-0", "llm"),
                                      ("pool-b", "vllm-b-0", "round-robin")):
                values = {**LABEL_VALUES, "pool": pool, "pod": pod, "lb_policy": policy}
                child = metric.labels(**{k: values[k] for k in series.labels}) \
                    if series.labels else metric
                self.children.append((series.kind, child))

    def __call__(self) -> bytes:
        for kind, child in self.children:
            if kind == "gauge":
                child.set(1)  # type: ignore[attr-defined]
            elif kind == "counter":
                child.inc(5)  # type: ignore[attr-defined]
            else:
                child.observe(0.2)  # type: ignore[attr-defined]
        return generate_latest(self.registry)


def annotations(port: int, **extra: str) -> dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
            "prometheus.io/path": "/metrics", **extra}


@pytest.fixture
def prom(tmp_path: Path, metrics_server):  # type: ignore[no-untyped-def]
    pod_a = metrics_server(VllmPage(ttft=0.3))
    pod_b = metrics_server(VllmPage(ttft=0.8))
    exporter = metrics_server(LlmtrafficPage())
    pods = [
        LocalPod("vllm-a-0", "llm", labels={"app": "pool-a"},
                 annotations=annotations(pod_a.port), ports={"http": pod_a.port}),
        # the annotation names the pool when the app label differs from it
        LocalPod("vllm-b-0", "llm", labels={"app": "vllm-b"},
                 annotations=annotations(pod_b.port, **{"llmtraffic.io/pool": "pool-b"}),
                 ports={"http": pod_b.port}),
        # annotated but not part of a pool (no app label): not a vLLM target
        LocalPod("stray-0", "llm", annotations=annotations(pod_a.port),
                 ports={"http": pod_a.port}),
        # not running yet: not a target
        LocalPod("vllm-a-1", "llm", labels={"app": "pool-a"}, phase="Pending",
                 annotations=annotations(pod_a.port), ports={"http": pod_a.port}),
        # our exporter: scraped by the llmtraffic job only, even though it is annotated
        LocalPod("llmtraffic-exporter-0", "llm-system",
                 labels={"app.kubernetes.io/name": "llmtraffic-exporter", "app": "exporter"},
                 annotations=annotations(exporter.port),
                 ports={"metrics": exporter.port, "http": exporter.port + 1}),
        # a meshed pod: its Envoy sidecar's stats port is rewritten to 15090
        LocalPod("mesh-0", "llm", labels={"app": "mesh"},
                 ports={"http": 18080, "http-envoy-prom": 15090}),
    ]
    config = localize(SCRAPE_CONFIG.read_text(), pods, tmp_path / "sd",
                      scrape_interval="1s", evaluation_interval="1s")
    with PrometheusServer(tmp_path / "prom", config) as server:
        yield server


def test_relabel_scrape_rules_and_every_dashboard_query(prom: PrometheusServer) -> None:
    by_job = active_targets(prom, {"vllm": 2, "llmtraffic": 1, "asm-envoy-stats-llm": 1})

    vllm_targets = sorted(by_job["vllm"], key=lambda t: t["labels"]["pod"])
    assert [(t["labels"]["pod"], t["labels"]["pool"], t["labels"]["namespace"])
            for t in vllm_targets] == [("vllm-a-0", "pool-a", "llm"),
                                       ("vllm-b-0", "pool-b", "llm")]
    assert all(t["scrapeUrl"].endswith("/metrics") for t in vllm_targets)
    (ours,) = by_job["llmtraffic"]
    assert ours["labels"]["component"] == "llmtraffic-exporter"
    assert ours["labels"]["kubernetes_pod_name"] == "llmtraffic-exporter-0"
    assert "pod" not in ours["labels"] and "pool" not in ours["labels"]
    (envoy,) = by_job["asm-envoy-stats-llm"]
    assert envoy["scrapeUrl"] == "http://127.0.0.1:15090/stats/prometheus"
    assert envoy["labels"]["pod"] == "mesh-0"

    prom.wait_for('count(rate(vllm:prompt_tokens_total{job="vllm"}[10s]) > 0) == 2')
    # metric_relabel_configs keep only vllm:* from vLLM pods
    assert prom.query('process_open_fds{job="vllm"}') == []
    # our series keep their own pod/pool labels (the vLLM pod they describe)
    up = prom.query(queries.gauge(m.POD_UP))
    assert {(s["metric"]["pool"], s["metric"]["pod"]) for s in up} == {
        ("pool-a", "vllm-a-0"), ("pool-b", "vllm-b-0")}
    assert all("exported_pod" not in s["metric"] for s in up)

    empty = run_until_all_answer(prom, all_queries(rate_interval="10s", range_="30s"))
    assert not empty, f"dashboard queries without data: {empty}"

    assert_variables_answer(prom)

    records = sorted({r["record"] for g in rules.recording_groups() for r in g["rules"]})
    empty = run_until_all_answer(prom, [(name, name) for name in records])
    assert not empty, f"recording rules without data: {empty}"
    kv = prom.query('pool:vllm_kv_cache_usage_perc:max{pool="pool-a"}')
    assert float(kv[0]["value"][1]) == 0.5
    # both pools once the rule has evaluated over scrapes of both (a loaded machine may
    # scrape one pod a round later than the other)
    ttft = {s["metric"]["pool"]: float(s["value"][1]) for s in prom.wait_for(
        'pool_quantile:vllm_time_to_first_token_seconds:histogram_quantile_rate5m'
        '{quantile="0.5"}',
        predicate=lambda r: {"pool-a", "pool-b"} <= {x["metric"]["pool"] for x in r})}
    assert ttft["pool-a"] < ttft["pool-b"]  # pool-b's pages observe a slower TTFT


def assert_variables_answer(prom: PrometheusAPI) -> None:
    """Every dashboard variable's label_values query finds at least one value."""
    for uid, name, query in variable_queries():
        selector, label = promql.label_values_selector(query)
        found = prom.query(f"count by ({label}) ({queries.substitute(selector)})")
        assert any(s["metric"].get(label) for s in found), f"{uid} variable {name} is empty"


def active_targets(prom: PrometheusServer, want: dict[str, int],
                   attempts: int = 40) -> dict[str, list[dict]]:
    """Active targets by job once file discovery has delivered `want` targets per job (or
    what there is after `attempts` quarter-second rounds)."""
    by_job: dict[str, list[dict]] = {}
    for _ in range(attempts):
        by_job = {}
        for t in prom.api("targets")["activeTargets"]:
            by_job.setdefault(t["scrapePool"], []).append(t)
        if all(len(by_job.get(job, [])) >= n for job, n in want.items()):
            break
        time.sleep(0.25)
    return by_job


def run_until_all_answer(prom: PrometheusAPI, named: list[tuple[str, str]],
                         attempts: int = 20) -> list[tuple[str, str]]:
    """Queries still returning no sample after `attempts` half-second rounds (rates need a
    few scrapes; rules a few evaluations)."""
    pending = list(named)
    for _ in range(attempts):
        pending = [(title, expr) for title, expr in pending if not prom.query(expr)]
        if not pending:
            return []
        time.sleep(0.5)
    return pending


def test_legacy_only_queries_are_the_swapped_panel() -> None:
    """Only the legacy `num_requests_swapped` target is left out of all_queries(); every
    other vLLM query also answers for V1 engines."""
    every = all_queries(include_legacy_only=True)
    default = all_queries()
    left_out = [expr for title, expr in every if (title, expr) not in default]
    assert len(left_out) == 1 and queries.gauge(v.LEGACY_NUM_REQUESTS_SWAPPED) in left_out[0]
