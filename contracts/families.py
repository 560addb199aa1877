"""Building blocks of every collector: label values made safe and capped (`OTHER`), plain
in-memory histograms, and prometheus_client families built from `series.Series`."""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.registry import Collector

from llmtraffic.contracts import series as m

OTHER = "other"
_CACHEABLE = (str, int, type(None))  # label values whose equality means the same label
UNKNOWN = ""
MAX_LABEL_CHARS = 128
#: Distinct values a label keeps by default before the rest count as `OTHER`.
MAX_LABEL_VALUES = 200


def clean_label(value: object) -> str:
    """Label text: control characters dropped, length capped."""
    s = value if isinstance(value, str) else ("" if value is None else str(value))
    if not s.isprintable():
        s = "".join(ch for ch in s if ch.isprintable())
    return s[:MAX_LABEL_CHARS]


class LabelCap:
    """Label values that clients choose, at most `max_values` per label: later ones read as
    `OTHER` and are counted per label in `overflow`."""

    __slots__ = ("max_values", "seen", "overflow")

    def __init__(self, labels: Iterable[str], max_values: int) -> None:
        self.max_values = max_values
        self.seen: dict[str, set[str]] = {label: set() for label in labels}
        self.overflow: dict[str, int] = {}  # label -> values folded into OTHER

    def __call__(self, label: str, value: object) -> str:
        """`value` made safe (`clean_label`), or OTHER once `label` has its fill."""
        v = clean_label(value)
        seen = self.seen[label]
        if v in seen:
            return v
        if len(seen) >= self.max_values:
            self.overflow[label] = self.overflow.get(label, 0) + 1
            return OTHER
        seen.add(v)
        return v


@dataclass
class Hist:
    buckets: tuple[float, ...]
    counts: list[float]
    sum: float = 0.0

    def observe(self, x: float) -> None:
        self.counts[bisect_left(self.buckets, x)] += 1  # non-cumulative; last = +Inf
        self.sum += x


def hist_in(table: dict, key: object, buckets: tuple[float, ...]) -> Hist:
    """The histogram for `key` in `table`, created empty on first use."""
    h = table.get(key)
    if h is None:
        h = table[key] = Hist(buckets, [0.0] * (len(buckets) + 1))
    return h


def counter_family(series: m.Series, items: Iterator[tuple[tuple[str, ...], float]],
             labels: tuple[str, ...] | None = None) -> CounterMetricFamily:
    fam = CounterMetricFamily(series.name, series.help, labels=labels or series.labels)
    for key, value in items:
        fam.add_metric(list(key), value)
    return fam


def gauge_family(series: m.Series, items) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(series.name, series.help, labels=series.labels)
    for key, value in items:
        fam.add_metric(list(key), value)
    return fam


def histogram_family(series: m.Series, table: dict[str, list[float]] | dict,
               sums: dict[str, float], labels: tuple[str, ...]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(series.name, series.help, labels=labels)
    for key, counts in table.items():
        cum, acc = [], 0.0
        for bound, c in zip((*series.buckets, math.inf), counts):
            acc += c
            cum.append(("+Inf" if bound == math.inf else repr(float(bound)), acc))
        fam.add_metric(list(key) if isinstance(key, tuple) else [key], cum, sums[key])
    return fam


class FamiliesCollector(Collector):
    """A prometheus_client Collector whose families come from `produce()` at each scrape."""

    def __init__(self, produce: Callable[[], Iterable[Metric]]) -> None:
        self.produce = produce

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        yield from self.produce()
