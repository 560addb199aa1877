"""Hand-built `Candidates` for the scorer tests: pods from `PodMetrics` in a real store."""

from __future__ import annotations

from llmtraffic.balancer.policy.request import LLMRequest
from llmtraffic.balancer.policy.scorer import Candidates
from llmtraffic.contracts.store import MetricsStore, Pod, PodMetrics

NOW = 100.0


def address(i: int) -> str:
    return f"10.0.0.{i}:8000"


def candidates(*metrics: PodMetrics | None, adapter: str | None = None,
               prompt_tokens: int = 100, matched: dict[str, int] | None = None,
               uncached: dict[str, float] | None = None,
               stale: tuple[int, ...] = ()) -> Candidates:
    """Pod i at `address(i)` with `metrics[i]` (None: never scraped), taken `NOW - 10`
    when i is in `stale`."""
    store = MetricsStore(stale_after=2.0)
    store.set_pods([Pod(f"p{i}", address(i), {}, "pool") for i in range(len(metrics))])
    for i, m in enumerate(metrics):
        if m is not None:
            store.update(address(i), m, NOW - (10.0 if i in stale else 0.0))
    pods = list(store.snapshot(NOW).pods)
    queues = [p.queue for p in pods]
    request = LLMRequest(model=adapter or "base", target_model=adapter or "base",
                         adapter=adapter, prompt="x" * 4 * prompt_tokens,
                         prompt_tokens=prompt_tokens, pool="pool")
    return Candidates(request, pods, queues, min(queues), max(queues), matched or {},
                      uncached or {})
