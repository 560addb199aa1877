"""Queue scorer: (maxQ - q) / (maxQ - minQ) over the candidates, 1.0 when all are equal.

q is `PodState.queue`: waiting requests plus those sent since the last scrape
(in-flight accounting), or the in-flight count when metrics are stale."""

from __future__ import annotations


def queue_scores(queues: list[float]) -> list[float]:
    lo, hi = min(queues), max(queues)
    if hi == lo:
        return [1.0] * len(queues)
    span = hi - lo
    return [(hi - q) / span for q in queues]
