"""KV-cache scorer: 1 - usage (0..1); pods with stale metrics score as empty (their load is
carried by the queue scorer's in-flight fallback)."""

from __future__ import annotations

from llmtraffic.balancer.policy.scorer import Candidates, Scorer
from llmtraffic.contracts.store import PodState


class KVCacheScorer(Scorer):
    name = "kv"

    def score(self, c: Candidates) -> list[float]:
        return [kv_score(p) for p in c.pods]


def kv_score(pod: PodState) -> float:
    """One pod's score."""
    # 1 - min(1, max(0, usage)) without two builtin calls; NaN clamps to 0 as max does
    u = pod.kv_usage
    return 1.0 - (u if u <= 1.0 else 1.0) if u > 0.0 else 1.0

