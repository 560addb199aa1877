"""One set of series from the balancer's worker processes: each worker's collected families
merged, counters and histograms summed, each gauge by the rule that keeps it true."""

from __future__ import annotations

from typing import Iterable, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from llmtraffic.contracts import series as m

#: How a gauge's values from several workers make one. Workers share nothing, so what they
#: hold adds up (in flight, queued); a state any worker is in is shown (an open circuit, a
#: stale pod seen, a watch down); a learned ratio is their mean. Any other gauge: "max".
GAUGE_MERGE: dict[str, str] = {
    m.BALANCER_INFLIGHT.name: "sum",
    m.BALANCER_QUEUED.name: "sum",
    m.BALANCER_CIRCUIT_OPEN.name: "max",
    m.BALANCER_CHARS_PER_TOKEN.name: "mean",
    m.SCRAPE_STALE_PODS.name: "max",
    m.SCRAPE_PERIOD.name: "max",
    m.DISCOVERY_API_UP.name: "min",
}
_REDUCE = {"sum": sum, "max": max, "min": min,
           "mean": lambda xs: sum(xs) / len(xs)}


def to_wire(families: Iterable[Metric]) -> list[list]:
    """Collected families as plain lists (orjson-ready): [name, type, help, samples]."""
    return [[f.name, f.type, f.documentation,
             [[s.name, s.labels, s.value] for s in f.samples]] for f in families]


def from_wire(data: list[list]) -> list[Metric]:
    out = []
    for name, kind, doc, samples in data:
        fam = Metric(name, doc, kind)
        for sname, labels, value in samples:
            fam.add_sample(sname, labels, value)
        out.append(fam)
    return out


def merge(workers: Iterable[Iterable[Metric]]) -> list[Metric]:
    """The families of every worker as one: a sample (name and labels) present in several
    workers is summed, or reduced by GAUGE_MERGE for a gauge; order of first appearance."""
    kinds: dict[str, tuple[str, str]] = {}
    values: dict[str, dict[tuple, list[float]]] = {}
    for families in workers:
        for f in families:
            if f.name not in kinds:
                kinds[f.name], values[f.name] = (f.type, f.documentation), {}
            table = values[f.name]
            for s in f.samples:
                key = (s.name, tuple(s.labels.items()))
                table.setdefault(key, []).append(s.value)
    out = []
    for name, (kind, doc) in kinds.items():
        reduce = _REDUCE[GAUGE_MERGE.get(name, "max")] if kind == "gauge" else sum
        fam = Metric(name, doc, kind)
        for (sname, labels), xs in values[name].items():
            fam.add_sample(sname, dict(labels), float(reduce(xs)))
        out.append(fam)
    return out


class MergedCollector(Collector):
    """A registry's view of families merged elsewhere (for `generate_latest`)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)
