"""The queue scorer: (maxQ - q) / (maxQ - minQ) over the candidates, 1.0 when all equal."""

from __future__ import annotations

from llmtraffic.balancer.policy.queue import QueueScorer
from llmtraffic.balancer.policy.settings import PolicyConfig
from llmtraffic.contracts.store import PodMetrics
from tests.balancer.policy.candidates import candidates


def test_least_queue_scores_one_greatest_zero():
    c = candidates(PodMetrics(waiting=0), PodMetrics(waiting=5), PodMetrics(waiting=10))
    assert QueueScorer(PolicyConfig()).score(c) == [1.0, 0.5, 0.0]


def test_equal_queues_all_score_one():
    c = candidates(PodMetrics(waiting=3), PodMetrics(waiting=3))
    assert QueueScorer(PolicyConfig()).score(c) == [1.0, 1.0]


def test_stale_pods_are_scored_by_their_inflight_count():
    c = candidates(PodMetrics(waiting=50), PodMetrics(waiting=0), stale=(0,))
    assert c.queues == [0.0, 0.0]  # the stale pod's 50 waiting are not trusted
    assert QueueScorer(PolicyConfig()).score(c) == [1.0, 1.0]


def test_it_never_names_the_reason():
    c = candidates(PodMetrics(waiting=0), PodMetrics(waiting=1))
    s = QueueScorer(PolicyConfig())
    assert s.reason_rank is None and not s.claims(c, 0)
