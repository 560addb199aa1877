"""KV-cache scorer: 1 - usage (0..1); pods with stale metrics score as empty (their load is
carried by the queue scorer's in-flight fallback)."""

from __future__ import annotations

from llmtraffic.contracts.store import PodState


def kv_score(pod: PodState) -> float:
    # 1 - min(1, max(0, usage)) without two builtin calls; NaN clamps to 0 as max does
    u = pod.kv_usage
    return 1.0 - (u if u <= 1.0 else 1.0) if u > 0.0 else 1.0

