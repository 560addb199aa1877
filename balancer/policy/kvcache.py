"""KV-cache scorer: 1 - usage (0..1); pods with stale metrics score as empty (their load is
carried by the queue scorer's in-flight fallback)."""

from __future__ import annotations

from exporter.store import PodState


def kv_scores(pods: list[PodState]) -> list[float]:
    return [1.0 - min(1.0, max(0.0, p.kv_usage)) for p in pods]
