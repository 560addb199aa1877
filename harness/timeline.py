"""A live run over time, as the comparison dashboard shows it: KV-cache use per pod, mean
queue time, TTFT p50/p90 and output tokens/s, per policy, from the client's outcomes and the
pods' own pages sampled during the run. Times in simulated seconds (wall × time scale)."""

from __future__ import annotations

import math
from typing import Sequence

from llmtraffic.contracts.store import PodMetrics
from llmtraffic.harness.charts import Panel, Series
from llmtraffic.harness.loadclient import Outcome
from llmtraffic.simulator.cluster import quantile

Samples = Sequence[tuple[float, Sequence[PodMetrics | None]]]
XLABEL = "time since the load began (s, simulated)"


def window_width(span: float, windows: int = 30) -> float:
    """A round width (1, 2, 5, 10, 20, ... s) giving about `windows` windows over `span`."""
    raw = max(span / windows, 1.0)
    scale = 10 ** math.floor(math.log10(raw))
    return next(m * scale for m in (1, 2, 5, 10) if m * scale >= raw)


def run_panels(outcomes: dict[str, Sequence[Outcome]], samples: dict[str, Samples],
               origin: float, time_scale: float) -> list[Panel]:
    """The four comparison panels, one side per policy; `origin` is the event-loop time
    the load began."""
    def sim(t: float) -> float:
        return (t - origin) * time_scale

    ends = [sim(o.start + (o.e2e or o.ttft or 0.0)) for outs in outcomes.values() for o in outs]
    width = window_width(max(ends, default=1.0))
    kv = Panel("KV-cache use per pod", "KV-cache use (0-1)", XLABEL, ymax=1.0,
               caption="How full each pod's KV cache is, from its own /metrics sampled every "
               "second (vLLM's kv_cache_usage_perc).")
    queue = Panel("Queue time (mean over each sampling interval)",
                  "queue time, mean (s, simulated)", XLABEL,
                  caption="How long the requests admitted in each interval waited in a vLLM "
                  "queue, from the pods' queue-time histograms.")
    ttft = Panel(f"TTFT p50 / p90 by arrival ({width:g} s windows)", "TTFT (s, simulated)",
                 XLABEL, caption="Time to first token at the client, p50 and p90 of the "
                 "requests arriving in each window.")
    tokens = Panel(f"Output tokens/s ({width:g} s windows)", "output tokens/s (simulated)",
                   XLABEL, caption="Tokens streamed back to the client per second; both "
                   "policies get the same requests, so they end with the same total.")
    for side in outcomes:
        kv.sides[side] = _kv(samples.get(side, ()), sim)
        queue.sides[side] = [_queue(samples.get(side, ()), sim, time_scale)]
        ttft.sides[side] = _ttft(outcomes[side], sim, width, time_scale)
        tokens.sides[side] = [_tokens(outcomes[side], sim, width)]
    return [kv, queue, ttft, tokens]


def _kv(samples: Samples, sim) -> list[Series]:
    pods = max((len(ms) for _, ms in samples), default=0)
    out = []
    for i in range(pods):
        points = [(sim(t), ms[i].kv_usage) for t, ms in samples
                  if i < len(ms) and ms[i] is not None]
        out.append(Series(f"pod {i}", [x for x, _ in points], [y for _, y in points]))
    return out


def _queue(samples: Samples, sim, time_scale: float) -> Series:
    """Mean queue time of the requests admitted between consecutive scrapes (all pods)."""
    def totals(ms: Sequence[PodMetrics | None]) -> tuple[float, float]:
        hs = [m.queue_time for m in ms if m is not None and m.queue_time is not None]
        return sum(h.sum for h in hs), sum(h.count for h in hs)

    xs, ys = [], []
    for (t0, a), (t1, b) in zip(samples, samples[1:]):
        (s0, c0), (s1, c1) = totals(a), totals(b)
        if c1 > c0 and len(a) == len(b) and None not in a and None not in b:
            xs.append(sim(t1))
            ys.append((s1 - s0) / (c1 - c0) * time_scale)
    return Series("mean", xs, ys)


def _windows(xs: Sequence[float], width: float) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, x in enumerate(xs):
        out.setdefault(int(max(x, 0.0) // width), []).append(i)
    return out


def _ttft(outs: Sequence[Outcome], sim, width: float, time_scale: float) -> list[Series]:
    done = [o for o in outs if o.ttft is not None]
    groups = _windows([sim(o.start) for o in done], width)
    keys = sorted(groups)
    xs = [(k + 0.5) * width for k in keys]
    return [Series(f"p{round(q * 100)}", xs,
                   [quantile([done[i].ttft * time_scale for i in groups[k]], q)  # type: ignore[operator]
                    for k in keys]) for q in (0.5, 0.9)]


def _tokens(outs: Sequence[Outcome], sim, width: float) -> Series:
    times = []
    for o in outs:
        if o.ttft is None:
            continue
        t = o.start + o.ttft
        times.append(sim(t))
        for gap in o.gaps:
            t += gap
            times.append(sim(t))
    groups = _windows(times, width)
    last = max(groups, default=-1)
    return Series("tokens/s", [(k + 0.5) * width for k in range(last + 1)],
                  [len(groups.get(k, ())) / width for k in range(last + 1)])
