"""Sample vLLM /metrics pages for the parser's tests and the scrape benchmark: every family of
the table in contracts/vllm.py (V1 or legacy), rendered by prometheus_client as vLLM renders
it, with seeded random values; and `gauge_page`, a page of a few gauges set by the caller."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from prometheus_client import (CollectorRegistry, Counter, Gauge, GCCollector, Histogram,
                               PlatformCollector, ProcessCollector)
from prometheus_client.exposition import generate_latest

from llmtraffic.contracts import vllm as v
from llmtraffic.simulator.workloads import BASE_MODEL, SEED_ADAPTERS

#: The engine's max_model_len, which sets the 1-2-5 token histograms' buckets.
MAX_MODEL_LEN = 4096
MAX_LORA = "4"


@dataclass
class _Page:
    """What every family of one page is rendered with."""

    rng: random.Random
    registry: CollectorRegistry
    model: str
    engines: tuple[str, ...]
    legacy: bool
    nan: bool
    lora_series: int

    def labels(self, family: v.Family) -> list[str]:
        """The family's labels; pre-V1 engines had no `engine` label."""
        return [name for name in family.labels if not (self.legacy and name == "engine")]

    def series(self, family: v.Family) -> list[dict[str, str]]:
        """One label set per engine (and per finished_reason) of a per-engine family."""
        names = self.labels(family)
        values = {"model_name": (self.model,), "engine": self.engines,
                  "finished_reason": v.FINISHED_REASONS, "reason": v.WAITING_REASONS}
        return [dict(zip(names, combo))
                for combo in itertools.product(*(values[name] for name in names))]


def _gauge(page: _Page, family: v.Family) -> None:
    rng = page.rng
    gauge = Gauge(family.name, family.help, page.labels(family), registry=page.registry)
    for labels in page.series(family):
        if page.nan:
            value = rng.choice([float("nan"), float("inf")])
        else:  # "_perc": a fraction, 1 meaning 100 percent
            value = rng.random() if family.name.endswith("_perc") else rng.randrange(0, 64)
        gauge.labels(**labels).set(value)


def _counter(page: _Page, family: v.Family) -> None:
    counter = Counter(family.name, family.help, page.labels(family), registry=page.registry)
    for labels in page.series(family):
        counter.labels(**labels).inc(round(page.rng.random() * 1e6))


def _histogram(page: _Page, family: v.Family) -> None:
    rng = page.rng
    bounds = family.bounds(MAX_MODEL_LEN)
    mean = bounds[len(bounds) // 2]  # observations spread over the middle buckets
    histogram = Histogram(family.name, family.help, page.labels(family), buckets=bounds,
                          registry=page.registry)
    for labels in page.series(family):
        child = histogram.labels(**labels)
        for _ in range(rng.randrange(0, 40)):
            child.observe(rng.expovariate(1.0 / mean))


def _info(page: _Page, family: v.Family) -> None:
    rng = page.rng
    gauge = Gauge(family.name, family.help, page.labels(family), registry=page.registry)
    if family.name == v.LORA_REQUESTS_INFO:  # value = update time; older label sets stay
        stamp = 1.7e9 + rng.random() * 1e6
        for _ in range(page.lora_series):
            running = ",".join(rng.sample(SEED_ADAPTERS, rng.randrange(0, 4)))
            waiting = ",".join(rng.sample(SEED_ADAPTERS, rng.randrange(0, 3)))
            stamp += rng.uniform(-5.0, 5.0)
            gauge.labels(max_lora=MAX_LORA, waiting_lora_adapters=waiting,
                         running_lora_adapters=running).set(stamp)
        return
    for engine in ("0",) if page.legacy else page.engines:  # cache_config_info
        config = dict(zip(v.CACHE_CONFIG_LABELS, (
            "16", "auto", "True", "0.8", "2048", str(rng.randrange(200, 900)))))
        if not page.legacy:
            config["engine"] = engine
        gauge.labels(**config).set(1)


_RENDER = {"gauge": _gauge, "counter": _counter, "histogram": _histogram, "info": _info}


def vllm_page(*, seed: int = 0, engines: tuple[str, ...] = ("0",), legacy: bool = False,
              model: str = BASE_MODEL, omit: frozenset[str] = frozenset(), nan: bool = False,
              lora_series: int = 3, process_metrics: bool = True) -> bytes:
    """A /metrics page as vLLM exposes it, rendered by prometheus_client: the V1 families
    (or, with `legacy`, the V0 ones, without the `engine` label), random seeded values.
    `omit` drops families by declared name; `nan` makes the gauges NaN/+Inf;
    `process_metrics` adds prometheus_client's process, platform and GC series."""
    registry = CollectorRegistry()
    if process_metrics:
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=registry)
    page = _Page(random.Random(seed), registry, model, engines, legacy, nan, lora_series)
    for family in v.families(legacy=legacy):
        if family.name not in omit:
            _RENDER[family.kind](page, family)
    return generate_latest(registry)


def gauge_page(model: str, values: dict[str, float]) -> bytes:
    """A page of the given per-engine gauges only (declared name -> value), V1 labels, one
    engine: the little a balancer reads."""
    registry = CollectorRegistry()
    for name, value in values.items():
        family = v.FAMILIES[name]
        if family.kind != "gauge":
            raise ValueError(f"gauge_page: {name} is a {family.kind}, not a gauge")
        gauge = Gauge(name, family.help, family.labels, registry=registry)
        gauge.labels(model_name=model, engine="0").set(value)
    return generate_latest(registry)
