"""Pod-side figures of a live run, read from the pods' own /metrics (vLLM's names, V1 or
legacy): KV-cache usage sampled during the run, and queue time, prefix-cache hit rate and
requests per pod as deltas between the first and the last scrape."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

import aiohttp

from llmtraffic.contracts.store import Histogram, PodMetrics
from llmtraffic.contracts.vllm import parse_metrics


@dataclass
class PodSampler:
    """`async with PodSampler(urls) as s: ...; s.summary(time_scale)`."""

    urls: list[str]
    interval: float = 1.0
    first: list[PodMetrics | None] = field(default_factory=list)
    last: list[PodMetrics | None] = field(default_factory=list)
    kv: list[list[float]] = field(default_factory=list)
    #: (event-loop time, each pod's metrics or None) for every scrape, first to last
    samples: list[tuple[float, list[PodMetrics | None]]] = field(default_factory=list)
    _task: asyncio.Task | None = None
    _session: aiohttp.ClientSession | None = None

    async def _scrape(self) -> list[PodMetrics | None]:
        assert self._session is not None

        async def one(url: str) -> PodMetrics | None:
            try:
                async with self._session.get(url + "/metrics",  # type: ignore[union-attr]
                                             timeout=aiohttp.ClientTimeout(total=2)) as r:
                    return parse_metrics(await r.read()) if r.status == 200 else None
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                return None

        ms = list(await asyncio.gather(*(one(u) for u in self.urls)))
        self.samples.append((asyncio.get_running_loop().time(), ms))
        return ms

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            ms = await self._scrape()
            got = [m.kv_usage for m in ms if m is not None]
            if got:
                self.kv.append(got)

    async def __aenter__(self) -> "PodSampler":
        self._session = aiohttp.ClientSession()
        self.first = await self._scrape()
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.last = await self._scrape()
        if self._session is not None:
            await self._session.close()

    def summary(self, time_scale: float = 1.0) -> dict:
        """kv_usage_mean/spread, queue_time_mean_s (simulated s), prefix_hit_rate,
        preemptions, picks_per_pod (requests finished per pod)."""
        q_sum = q_count = hits = queries = preempted = 0.0
        per_pod = []
        for a, b in zip(self.first, self.last):
            if a is None or b is None:
                per_pod.append(0)
                continue
            # a histogram with no observation yet is absent from the page: count it as 0
            q_sum += _hsum(b.queue_time) - _hsum(a.queue_time)
            q_count += _hcount(b.queue_time) - _hcount(a.queue_time)
            hits += b.prefix_hits - a.prefix_hits
            queries += b.prefix_queries - a.prefix_queries
            preempted += b.preemptions - a.preemptions
            per_pod.append(int(_hcount(b.ttft) - _hcount(a.ttft)))
        kv = self.kv
        return {
            # the pods observe wall seconds; × time_scale gives simulated seconds
            "queue_time_mean_s": (q_sum / q_count * time_scale) if q_count else math.nan,
            "kv_usage_mean": sum(sum(s) / len(s) for s in kv) / len(kv) if kv else math.nan,
            "kv_usage_spread": sum(max(s) - min(s) for s in kv) / len(kv) if kv else math.nan,
            "prefix_hit_rate": (hits / queries) if queries else 0.0,
            "preemptions": int(preempted),
            "picks_per_pod": per_pod,
        }


def _hsum(h: Histogram | None) -> float:
    return h.sum if h is not None else 0.0


def _hcount(h: Histogram | None) -> float:
    return h.count if h is not None else 0.0
