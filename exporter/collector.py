"""The exporter's series: token counters by model (asm_llm_proxy_*, cardinality-capped),
self-metrics (ExporterStats), and pod/pool gauges from the store, exposed through one
prometheus_client Collector."""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Callable, Iterator

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.registry import Collector

from exporter import metrics as m
from exporter.accesslog import FIELD_NAMES, LLMRecord
from exporter.store import MetricsStore

OTHER = "other"
_CACHEABLE = (str, int, type(None))  # label values whose equality means the same label
UNKNOWN = ""
MAX_LABEL_CHARS = 128


def clean_label(value: object) -> str:
    """Label text: control characters dropped, length capped."""
    s = value if isinstance(value, str) else ("" if value is None else str(value))
    if not s.isprintable():
        s = "".join(ch for ch in s if ch.isprintable())
    return s[:MAX_LABEL_CHARS]


@dataclass
class _Hist:
    buckets: tuple[float, ...]
    counts: list[float]
    sum: float = 0.0

    def observe(self, x: float) -> None:
        self.counts[bisect_left(self.buckets, x)] += 1  # non-cumulative; last = +Inf
        self.sum += x


def hist_in(table: dict, key: object, buckets: tuple[float, ...]) -> _Hist:
    """The histogram for `key` in `table`, created empty on first use."""
    h = table.get(key)
    if h is None:
        h = table[key] = _Hist(buckets, [0.0] * (len(buckets) + 1))
    return h


class TokenCounters:
    """asm_llm_proxy_* series. `dimensions` are LLMRecord fields used as labels (default
    `model`); each label keeps at most `max_values_per_label` values, the rest are `other`."""

    def __init__(self, dimensions: tuple[str, ...] = ("model",),
                 max_values_per_label: int = 200) -> None:
        for d in dimensions:
            if d not in FIELD_NAMES:
                raise ValueError(f"unknown dimension {d!r}; use LLMRecord fields such as "
                                 "model, target_model, pool, lb_policy, response_code")
        if "model" not in dimensions:
            dimensions = ("model", *dimensions)
        self.dimensions = tuple(dimensions)
        self.max_values = max_values_per_label
        self.prompt: dict[tuple[str, ...], float] = {}
        self.completion: dict[tuple[str, ...], float] = {}
        self.requests: dict[tuple[str, str], float] = {}
        self.ttft: dict[str, _Hist] = {}
        self.duration: dict[str, _Hist] = {}
        self._seen: dict[str, set[str]] = {d: set() for d in self.dimensions}
        self.overflow: dict[str, int] = {}
        # dimension values (the model alone, or a tuple) -> (label key, code -> requests key);
        # a field's values keep one type (the parser's converters see to it), so equal
        # values mean equal labels
        self._keys: dict[object, tuple[tuple[str, ...], dict]] = {}
        self._model_only = self.dimensions == ("model",)
        self._values = attrgetter(*self.dimensions) if len(self.dimensions) > 1 else None

    def _capped(self, dim: str, value: object) -> str:
        v = clean_label(value)
        seen = self._seen[dim]
        if v in seen:
            return v
        if len(seen) >= self.max_values:
            self.overflow[dim] = self.overflow.get(dim, 0) + 1
            return OTHER
        seen.add(v)
        return v

    def _entry(self, raw: object, values: tuple) -> tuple[tuple[str, ...], dict]:
        """(label key, response_code -> requests key) for a record's dimension values;
        remembered only when no value was folded into `other` (each such record counts
        toward the overflow) and every value is a str, int or None (equal means same
        label)."""
        key = tuple(self._capped(d, v) for d, v in zip(self.dimensions, values))
        entry: tuple[tuple[str, ...], dict] = (key, {})
        if (len(self._keys) < self.max_values * 4
                and all(type(v) in _CACHEABLE for v in values)
                and all(clean_label(v) in self._seen[d]  # folded values never are
                        for d, v in zip(self.dimensions, values))):
            self._keys[raw] = entry
        return entry

    def observe(self, rec: LLMRecord) -> bool:
        """Count one record; False (and nothing counted) when it carries no model."""
        model = rec.model
        if not model:
            return False
        if self._model_only:
            entry = self._keys.get(model)
            if entry is None:
                entry = self._entry(model, (model,))
        else:
            raw = self._values(rec)
            entry = self._keys.get(raw)
            if entry is None:
                entry = self._entry(raw, raw)
        key, codes = entry
        p = rec.prompt_tokens
        if p is not None:
            prompt = self.prompt
            prompt[key] = prompt.get(key, 0.0) + p
        c = rec.completion_tokens
        if c is not None:
            completion = self.completion
            completion[key] = completion.get(key, 0.0) + c
        code = rec.response_code
        rk = codes.get(code)
        if rk is None:
            rk = codes[code] = (key[0], "" if code is None else str(code))
        requests = self.requests
        requests[rk] = requests.get(rk, 0.0) + 1
        if rec.ttft_ms is not None:
            hist_in(self.ttft, key[0], m.TTFT.buckets).observe(rec.ttft_ms / 1000)
        if rec.duration_ms is not None:
            hist_in(self.duration, key[0], m.DURATION.buckets).observe(rec.duration_ms / 1000)
        return True

    # ---- checkpoint --------------------------------------------------------------------
    def state(self) -> dict:
        return {"dimensions": list(self.dimensions),
                "prompt": [[list(k), v] for k, v in self.prompt.items()],
                "completion": [[list(k), v] for k, v in self.completion.items()],
                "requests": [[list(k), v] for k, v in self.requests.items()],
                "ttft": {k: [h.counts, h.sum] for k, h in self.ttft.items()},
                "duration": {k: [h.counts, h.sum] for k, h in self.duration.items()},
                "overflow": dict(self.overflow)}

    def restore(self, state: dict) -> None:
        if list(state.get("dimensions", [])) != list(self.dimensions):
            raise ValueError(f"checkpoint was written with dimensions {state.get('dimensions')}"
                             f", now {list(self.dimensions)}; delete the positions file or "
                             "keep the same --dimensions")
        self.prompt = {tuple(k): v for k, v in state["prompt"]}
        self.completion = {tuple(k): v for k, v in state["completion"]}
        self.requests = {tuple(k): v for k, v in state["requests"]}  # type: ignore[misc]
        self.ttft = {k: _Hist(m.TTFT.buckets, list(c), s) for k, (c, s) in state["ttft"].items()}
        self.duration = {k: _Hist(m.DURATION.buckets, list(c), s)
                         for k, (c, s) in state["duration"].items()}
        self.overflow = dict(state.get("overflow", {}))
        self._keys.clear()
        for key in [*self.prompt, *self.completion]:
            for d, v in zip(self.dimensions, key):
                self._seen[d].add(v)


@dataclass
class ExporterStats:
    """Plain counters about the exporter itself (exposed by ExporterCollector)."""

    lines: dict[str, int] = field(default_factory=dict)  # file -> lines read
    bytes: dict[str, int] = field(default_factory=dict)
    parse_errors: dict[str, int] = field(default_factory=dict)  # reason -> lines
    rotations: dict[str, int] = field(default_factory=dict)  # kind -> count
    lag: dict[str, int] = field(default_factory=dict)  # file -> unread bytes
    scrapes: dict[tuple[str, str], int] = field(default_factory=dict)  # (pod, outcome)
    scrape_durations: list[float] = field(default_factory=lambda: [0.0] * (
        len(m.SCRAPE_DURATION.buckets) + 1))
    scrape_seconds_sum: float = 0.0

    def parse_error(self, reason: str) -> None:
        self.parse_errors[reason] = self.parse_errors.get(reason, 0) + 1

    def rotation(self, kind: str) -> None:
        self.rotations[kind] = self.rotations.get(kind, 0) + 1

    def scrape(self, pod: str, outcome: str, seconds: float) -> None:
        k = (pod, outcome)
        self.scrapes[k] = self.scrapes.get(k, 0) + 1
        self.scrape_durations[bisect_left(m.SCRAPE_DURATION.buckets, seconds)] += 1
        self.scrape_seconds_sum += seconds


def _counter(series: m.Series, items: Iterator[tuple[tuple[str, ...], float]],
             labels: tuple[str, ...] | None = None) -> CounterMetricFamily:
    fam = CounterMetricFamily(series.name, series.help, labels=labels or series.labels)
    for key, value in items:
        fam.add_metric(list(key), value)
    return fam


def _gauge(series: m.Series, items) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(series.name, series.help, labels=series.labels)
    for key, value in items:
        fam.add_metric(list(key), value)
    return fam


def _histogram(series: m.Series, table: dict[str, list[float]] | dict,
               sums: dict[str, float], labels: tuple[str, ...]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(series.name, series.help, labels=labels)
    for key, counts in table.items():
        cum, acc = [], 0.0
        for bound, c in zip((*series.buckets, math.inf), counts):
            acc += c
            cum.append(("+Inf" if bound == math.inf else repr(float(bound)), acc))
        fam.add_metric(list(key) if isinstance(key, tuple) else [key], cum, sums[key])
    return fam


class ExporterCollector(Collector):
    """Everything the exporter exposes on /metrics."""

    def __init__(self, counters: TokenCounters | None, stats: ExporterStats,
                 store: MetricsStore | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.counters = counters
        self.stats = stats
        self.store = store
        self.clock = clock

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        if self.counters is not None:
            yield from self._tokens(self.counters)
        yield from self._self_metrics()
        if self.store is not None:
            yield from pod_families(self.store, self.clock())

    def _tokens(self, c: TokenCounters) -> Iterator[Metric]:
        yield _counter(m.PROMPT_TOKENS, iter(list(c.prompt.items())), c.dimensions)
        yield _counter(m.COMPLETION_TOKENS, iter(list(c.completion.items())), c.dimensions)
        yield _counter(m.REQUESTS, iter(list(c.requests.items())))
        for series, table in ((m.TTFT, c.ttft), (m.DURATION, c.duration)):
            snap = dict(table)
            yield _histogram(series, {k: h.counts for k, h in snap.items()},
                             {k: h.sum for k, h in snap.items()}, series.labels)
        yield _counter(m.LABEL_OVERFLOW, ((((k,), v)) for k, v in list(c.overflow.items())))

    def _self_metrics(self) -> Iterator[Metric]:
        s = self.stats
        yield _counter(m.LINES_READ, (((k,), v) for k, v in list(s.lines.items())))
        yield _counter(m.BYTES_READ, (((k,), v) for k, v in list(s.bytes.items())))
        yield _counter(m.PARSE_ERRORS, (((k,), v) for k, v in list(s.parse_errors.items())))
        yield _counter(m.ROTATIONS, (((k,), v) for k, v in list(s.rotations.items())))
        yield _gauge(m.TAIL_LAG, (((k,), v) for k, v in list(s.lag.items())))
        yield _counter(m.SCRAPES, list(s.scrapes.items()))
        if s.scrapes:
            yield _histogram(m.SCRAPE_DURATION, {(): s.scrape_durations},
                             {(): s.scrape_seconds_sum}, ())


def pod_families(store: MetricsStore, now: float) -> Iterator[Metric]:
    """llmtraffic_pod_* and llmtraffic_pool_* gauges: the autoscaling signals."""
    snap = store.snapshot(now)
    up, kv, waiting, running, age = [], [], [], [], []
    pools: dict[str, list] = {}
    for p in snap.pods:
        key = (p.pod.pool, p.pod.name)
        fresh = p.fresh and p.metrics is not None
        up.append((key, 1.0 if fresh else 0.0))
        if p.scraped_at is not None:
            age.append((key, max(0.0, now - p.scraped_at)))
        pools.setdefault(p.pod.pool, [])
        if fresh:
            kv.append((key, p.metrics.kv_usage))
            waiting.append((key, p.metrics.waiting))
            running.append((key, p.metrics.running))
            pools[p.pod.pool].append(p.metrics)
    yield _gauge(m.POD_UP, up)
    yield _gauge(m.POD_KV_USAGE, kv)
    yield _gauge(m.POD_WAITING, waiting)
    yield _gauge(m.POD_RUNNING, running)
    yield _gauge(m.POD_METRICS_AGE, age)
    yield _gauge(m.POOL_READY_PODS, (((pool,), len(ms)) for pool, ms in pools.items()))
    yield _gauge(m.POOL_KV_USAGE_MEAN, (((pool,), sum(x.kv_usage for x in ms) / len(ms))
                                        for pool, ms in pools.items() if ms))
    yield _gauge(m.POOL_KV_USAGE_MAX, (((pool,), max(x.kv_usage for x in ms))
                                       for pool, ms in pools.items() if ms))
    yield _gauge(m.POOL_WAITING, (((pool,), sum(x.waiting for x in ms))
                                  for pool, ms in pools.items()))
