"""The pod and pool gauges (llmtraffic_pod_*, llmtraffic_pool_*) read from the store: the
autoscaling signals."""

from __future__ import annotations

from typing import Iterator

from prometheus_client.core import Metric

from llmtraffic.contracts import series as m
from llmtraffic.contracts.families import gauge_family
from llmtraffic.contracts.store import MetricsStore


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
    yield gauge_family(m.POD_UP, up)
    yield gauge_family(m.POD_KV_USAGE, kv)
    yield gauge_family(m.POD_WAITING, waiting)
    yield gauge_family(m.POD_RUNNING, running)
    yield gauge_family(m.POD_METRICS_AGE, age)
    yield gauge_family(m.POOL_READY_PODS, (((pool,), len(ms)) for pool, ms in pools.items()))
    yield gauge_family(m.POOL_KV_USAGE_MEAN, (((pool,), sum(x.kv_usage for x in ms) / len(ms))
                                        for pool, ms in pools.items() if ms))
    yield gauge_family(m.POOL_KV_USAGE_MAX, (((pool,), max(x.kv_usage for x in ms))
                                       for pool, ms in pools.items() if ms))
    yield gauge_family(m.POOL_WAITING, (((pool,), sum(x.waiting for x in ms))
                                  for pool, ms in pools.items()))
