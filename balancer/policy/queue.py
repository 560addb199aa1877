"""Queue scorer: (maxQ - q) / (maxQ - minQ) over the candidates, 1.0 when all are equal.

q is `PodState.queue`: waiting requests plus those sent since the last scrape
(in-flight accounting), or the in-flight count when metrics are stale."""

from __future__ import annotations

from llmtraffic.balancer.policy.scorer import Candidates, Scorer


class QueueScorer(Scorer):
    name = "queue"

    def score(self, c: Candidates) -> list[float]:
        lo, hi = c.q_min, c.q_max
        return [queue_score(q, lo, hi) for q in c.queues]


def queue_score(q: float, lo: float, hi: float) -> float:
    """One pod's score, given the candidates' least and greatest queue."""
    return 1.0 if hi == lo else (hi - q) / (hi - lo)
