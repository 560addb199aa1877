"""The queue scorer: (maxQ - q) / max(maxQ - minQ, queue_span) over the candidates, 1.0 when
that is 0 (GIE's queue scorer when queue_span is 0)."""

from __future__ import annotations

from llmtraffic.balancer.policy.queue import QueueScorer
from llmtraffic.balancer.policy.settings import PolicyConfig
from llmtraffic.contracts.store import PodMetrics
from tests.balancer.policy.candidates import candidates


GIE = PolicyConfig(queue_span=0)


def test_least_queue_scores_one_greatest_zero():
    c = candidates(PodMetrics(waiting=0), PodMetrics(waiting=5), PodMetrics(waiting=10))
    assert QueueScorer(GIE).score(c) == [1.0, 0.5, 0.0]


def test_a_spread_under_the_span_scores_in_proportion():
    """A one-request difference is 1/span of the term, not all of it; a spread wider than
    the span still spans 0..1."""
    c = candidates(PodMetrics(waiting=2), PodMetrics(waiting=3))
    assert QueueScorer(PolicyConfig(queue_span=8)).score(c) == [1.0, 7 / 8]
    assert QueueScorer(GIE).score(c) == [1.0, 0.0]
    c = candidates(PodMetrics(waiting=0), PodMetrics(waiting=500))
    assert QueueScorer(PolicyConfig(queue_span=8)).score(c) == [1.0, 0.0]


def test_equal_queues_all_score_one():
    c = candidates(PodMetrics(waiting=3), PodMetrics(waiting=3))
    assert QueueScorer(PolicyConfig()).score(c) == [1.0, 1.0]
    assert QueueScorer(GIE).score(c) == [1.0, 1.0]


def test_stale_pods_are_scored_by_their_inflight_count():
    c = candidates(PodMetrics(waiting=50), PodMetrics(waiting=0), stale=(0,))
    assert c.queues == [0.0, 0.0]  # the stale pod's 50 waiting are not trusted
    assert QueueScorer(PolicyConfig()).score(c) == [1.0, 1.0]


def test_it_never_names_the_reason():
    c = candidates(PodMetrics(waiting=0), PodMetrics(waiting=1))
    s = QueueScorer(PolicyConfig())
    assert s.reason_rank is None and not s.claims(c, 0)
