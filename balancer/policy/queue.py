"""Queue scorer: 1 - (q - minQ) / max(maxQ - minQ, span) over the candidates, 1.0 when that
is 0 (GIE's (maxQ - q) / (maxQ - minQ) when the span is 0). With `queue_span` 0 it is GIE's queue scorer (any spread, even one request, spans the
whole 0..1); with a span of S requests a spread smaller than S scores in proportion, so a
one-request difference weighs 1/S of a full queue term, not all of it.

q is `PodState.queue`: waiting requests plus those sent since the last scrape
(in-flight accounting), or the in-flight count when metrics are stale."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmtraffic.balancer.policy.scorer import Candidates, Scorer

if TYPE_CHECKING:
    from llmtraffic.balancer.policy.settings import PolicyConfig


class QueueScorer(Scorer):
    name = "queue"

    def __init__(self, config: PolicyConfig) -> None:
        self.span = config.queue_span

    def score(self, c: Candidates) -> list[float]:
        lo, hi = c.q_min, c.q_max
        spread = hi - lo if hi - lo > self.span else self.span
        return [queue_score(q, lo, spread) for q in c.queues]

    def native_params(self) -> dict[str, float]:
        return {"queue_span": self.span}


def queue_score(q: float, lo: float, spread: float) -> float:
    """One pod's score, given the candidates' least queue and the spread that spans the
    score's 0..1 (max(greatest - least, queue_span))."""
    return 1.0 if spread == 0 else 1.0 - (q - lo) / spread
