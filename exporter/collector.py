"""The exporter's series: its own counters (ExporterStats: lines, bytes, parse errors,
rotations, tail lag, scrapes) beside the token series and pod/pool gauges of `contracts`,
exposed through one prometheus_client Collector."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from llmtraffic.contracts import series as m
from llmtraffic.contracts.families import counter_family, gauge_family
from llmtraffic.contracts.podseries import pod_families
from llmtraffic.contracts.scrape import ScrapeCounts, scrape_families
from llmtraffic.contracts.store import MetricsStore
from llmtraffic.contracts.tokens import TokenCounters, token_families


@dataclass
class ExporterStats(ScrapeCounts):
    """Plain counters about the exporter itself (exposed by ExporterCollector)."""

    lines: dict[str, int] = field(default_factory=dict)  # file -> lines read
    bytes: dict[str, int] = field(default_factory=dict)
    parse_errors: dict[str, int] = field(default_factory=dict)  # reason -> lines
    rotations: dict[str, int] = field(default_factory=dict)  # kind -> count
    lag: dict[str, int] = field(default_factory=dict)  # file -> unread bytes
    without_tokens: dict[str, int] = field(default_factory=dict)  # reason -> records
    received: dict[str, int] = field(default_factory=dict)  # receiver -> records

    def parse_error(self, reason: str) -> None:
        self.parse_errors[reason] = self.parse_errors.get(reason, 0) + 1

    tail_errors: dict[str, int] = field(default_factory=dict)  # reason -> count
    enriched_dropped: int = 0
    healthy: bool = True

    def rotation(self, kind: str) -> None:
        self.rotations[kind] = self.rotations.get(kind, 0) + 1

    def tail_error(self, reason: str) -> None:
        self.tail_errors[reason] = self.tail_errors.get(reason, 0) + 1



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
            yield from token_families(self.counters)
        yield from self._self_metrics()
        if self.store is not None:
            yield from pod_families(self.store, self.clock())

    def _self_metrics(self) -> Iterator[Metric]:
        s = self.stats
        yield counter_family(m.LINES_READ, (((k,), v) for k, v in list(s.lines.items())))
        yield counter_family(m.BYTES_READ, (((k,), v) for k, v in list(s.bytes.items())))
        yield counter_family(m.PARSE_ERRORS, (((k,), v) for k, v in list(s.parse_errors.items())))
        yield counter_family(m.ROTATIONS, (((k,), v) for k, v in list(s.rotations.items())))
        yield gauge_family(m.TAIL_LAG, (((k,), v) for k, v in list(s.lag.items())))
        yield counter_family(m.TAIL_ERRORS, (((k,), v) for k, v in list(s.tail_errors.items())))
        yield counter_family(m.ENRICHED_DROPPED, iter([((), float(s.enriched_dropped))]))
        yield gauge_family(m.HEALTHY, [((), 1.0 if s.healthy else 0.0)])
        yield counter_family(m.RECORDS_WITHOUT_TOKENS,
                             (((k,), v) for k, v in list(s.without_tokens.items())))
        yield counter_family(m.RECORDS_RECEIVED, (((k,), v) for k, v in list(s.received.items())))
        yield from scrape_families(s)
