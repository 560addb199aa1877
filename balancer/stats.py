"""The balancer's own series (llmtraffic_balancer_*, declared in contracts/series.py):
plain in-memory counters fed once per request, exposed by one Collector."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from llmtraffic.contracts import series as m
from llmtraffic.contracts.record import LLMRecord
from llmtraffic.contracts.families import (MAX_LABEL_VALUES, Hist, LabelCap, clean_label,
                                           counter_family, gauge_family, hist_in,
                                           histogram_family)
from llmtraffic.contracts.store import MetricsStore
from llmtraffic.contracts.tokens import UNKNOWN_MODEL, counted_model, counted_usage

if TYPE_CHECKING:
    from llmtraffic.balancer.admission import Admission
    from llmtraffic.balancer.breaker import CircuitBreaker


class BalancerStats:
    """Counters and histograms of routed requests; `observe(record)` once per request.

    Model names come from clients: each of the `model` and `target_model` labels keeps at
    most `max_label_values` values, later ones are counted as `other`."""

    def __init__(self, lb_policy: str, max_label_values: int = MAX_LABEL_VALUES) -> None:
        self.lb_policy = lb_policy
        self.max_label_values = max_label_values
        self._capped = LabelCap(("model", "target_model"), max_label_values)
        self.requests: dict[tuple[str, ...], float] = {}
        self.prompt: dict[tuple[str, ...], float] = {}
        self.completion: dict[tuple[str, ...], float] = {}
        self.ttft: dict[tuple[str, ...], Hist] = {}
        self.duration: dict[tuple[str, ...], Hist] = {}
        self.picks: dict[tuple[str, ...], float] = {}
        self.shed: dict[tuple[str, ...], float] = {}
        self.retries: dict[tuple[str, ...], float] = {}
        self.pick_seconds = Hist(m.BALANCER_PICK_DURATION.buckets,
                                  [0.0] * (len(m.BALANCER_PICK_DURATION.buckets) + 1))
        self._lock = threading.Lock()

    @staticmethod
    def _add(table: dict, key: tuple[str, ...], v: float = 1.0) -> None:
        table[key] = table.get(key, 0.0) + v

    @property
    def overflow(self) -> dict[str, int]:
        """Label -> values folded into `other`."""
        return self._capped.overflow

    def picked(self, pool: str, pod: str, seconds: float) -> None:
        with self._lock:
            self._add(self.picks, (pool, pod, self.lb_policy))
            self.pick_seconds.observe(seconds)

    def refused(self, pool: str, model: str, status: int, reason: str | None = None) -> None:
        """A request the balancer answered itself: `reason` (queue_full, queue_timeout),
        else shed for a 429 and no_endpoint for a 503."""
        reason = reason or ("shed" if status == 429 else "no_endpoint")
        with self._lock:
            self._add(self.shed, (pool, self._capped("model", model), reason))

    def retried(self, pool: str) -> None:
        with self._lock:
            self._add(self.retries, (pool,))

    def observe(self, rec: LLMRecord) -> None:
        """One finished request (any outcome) as logged."""
        pool = rec.pool or ""
        code = "" if rec.response_code is None else str(rec.response_code)
        usage = counted_usage(rec) or (None, None)  # the exporter's rules (contracts)
        with self._lock:
            model = self._capped("model", counted_model(rec))
            target = UNKNOWN_MODEL if rec.response_code == 404 and rec.target_model \
                else rec.target_model
            key = (pool, model, self.lb_policy)
            self._add(self.requests, (pool, model, self._capped("target_model", target),
                                      self.lb_policy, code))
            if usage[0] is not None:
                self._add(self.prompt, key, usage[0])
            if usage[1] is not None:
                self._add(self.completion, key, usage[1])
            if rec.ttft_ms is not None:
                hist_in(self.ttft, key, m.BALANCER_TTFT.buckets).observe(rec.ttft_ms / 1e3)
            if rec.duration_ms is not None:
                hist_in(self.duration, key,
                        m.BALANCER_DURATION.buckets).observe(rec.duration_ms / 1e3)


class BalancerCollector(Collector):
    """llmtraffic_balancer_* from `BalancerStats`, in-flight gauges from the store."""

    def __init__(self, stats: BalancerStats, store: MetricsStore,
                 models: Callable[[], Iterable[tuple[str, str]]] = lambda: (),
                 breaker: CircuitBreaker | None = None,
                 ratios: Callable[[], dict[str, float]] | None = None) -> None:
        self.stats = stats
        self.store = store
        self.models = models  # (pool, model) served: their shed series start at 0
        self.breaker = breaker
        self.ratios = ratios  # target model -> learned characters per token (bounded)

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        with s._lock:
            tables = {name: dict(getattr(s, name)) for name in
                      ("requests", "prompt", "completion", "picks", "shed", "retries",
                       "ttft", "duration")}
            pick = (list(s.pick_seconds.counts), s.pick_seconds.sum)
        for pool, model in self.models():  # so rates and alerts read 0, not "no data"
            for reason in ("shed", "no_endpoint"):
                tables["shed"].setdefault((pool, clean_label(model), reason), 0.0)
        pods = self.store.snapshot(0.0).pods
        yield counter_family(m.BALANCER_REQUESTS, iter(tables["requests"].items()))
        yield counter_family(m.BALANCER_PROMPT_TOKENS, iter(tables["prompt"].items()))
        yield counter_family(m.BALANCER_COMPLETION_TOKENS, iter(tables["completion"].items()))
        yield counter_family(m.BALANCER_PICKS, iter(tables["picks"].items()))
        yield counter_family(m.BALANCER_SHED, iter(tables["shed"].items()))
        yield counter_family(m.BALANCER_RETRIES, iter(tables["retries"].items()))
        for series, name in ((m.BALANCER_TTFT, "ttft"), (m.BALANCER_DURATION, "duration")):
            t = tables[name]
            yield histogram_family(series, {k: list(h.counts) for k, h in t.items()},
                             {k: h.sum for k, h in t.items()}, series.labels)
        yield histogram_family(m.BALANCER_PICK_DURATION, {(s.lb_policy,): pick[0]},
                         {(s.lb_policy,): pick[1]}, m.BALANCER_PICK_DURATION.labels)
        yield gauge_family(m.BALANCER_INFLIGHT, (((p.pod.pool, p.pod.name), p.inflight)
                                           for p in pods))
        if self.ratios is not None:
            yield gauge_family(m.BALANCER_CHARS_PER_TOKEN,
                               (((clean_label(k),), v) for k, v in self.ratios().items()))
        if self.breaker is not None:
            now = time.monotonic()
            opens = dict(self.breaker.opens)
            open_now = self.breaker.open_circuits(now)
            yield counter_family(m.BALANCER_CIRCUIT_OPENS, (
                ((p.pod.pool, p.pod.name), float(opens.get(p.pod.address, 0))) for p in pods))
            yield gauge_family(m.BALANCER_CIRCUIT_OPEN, (
                ((p.pod.pool, p.pod.name), 1.0 if p.pod.address in open_now else 0.0)
                for p in pods))


def admission_families(a: Admission) -> Iterator[Metric]:
    """The admission queue's length by (pool, priority) and its wait-time histogram."""
    yield gauge_family(m.BALANCER_QUEUED, iter(a.lengths().items()))
    waited = dict(a.waited)
    yield histogram_family(m.BALANCER_QUEUE_WAIT,
                           {k: list(h.counts) for k, h in waited.items()},
                           {k: h.sum for k, h in waited.items()}, m.BALANCER_QUEUE_WAIT.labels)
