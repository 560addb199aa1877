"""The prefix-affinity scorer: the prefill a matched pod saves, net of the prefill queued
ahead of the request there beyond the shortest queue, as a fraction of the prompt."""

from __future__ import annotations

import pytest

from llmtraffic.balancer.policy.prefix import TOKENS_PER_BLOCK, PrefixScorer
from llmtraffic.balancer.policy.settings import PolicyConfig
from llmtraffic.contracts.store import PodMetrics
from tests.balancer.policy.candidates import address, candidates

SCORER = PrefixScorer(PolicyConfig(prefix_queue_tokens=64))


def test_no_match_no_opinion():
    c = candidates(PodMetrics(), PodMetrics())
    assert SCORER.score(c) is None and not SCORER.claims(c, 0)


def test_only_matched_candidates_score():
    c = candidates(PodMetrics(), PodMetrics(), PodMetrics(), prompt_tokens=320,
                   matched={address(1): 5, "10.9.9.9:8000": 9})  # the last is not a candidate
    assert SCORER.score(c) == [0.0, 5 * TOKENS_PER_BLOCK / 320, 0.0]
    assert SCORER.claims(c, 1) and not SCORER.claims(c, 0)


def test_each_request_queued_ahead_costs_its_uncached_prefill():
    """Two requests queued beyond the shortest queue, at 100 uncached tokens each."""
    c = candidates(PodMetrics(waiting=2), PodMetrics(waiting=0), prompt_tokens=400,
                   matched={address(0): 10}, uncached={address(0): 100.0})
    assert SCORER.score(c)[0] == pytest.approx((320 - 200) / 400)
    # at least prefix_queue_tokens each, and the prompt's own length when nothing was sent
    c = candidates(PodMetrics(waiting=2), PodMetrics(waiting=0), prompt_tokens=400,
                   matched={address(0): 10}, uncached={address(0): 10.0})
    assert SCORER.score(c)[0] == pytest.approx((320 - 128) / 400)
    c = candidates(PodMetrics(waiting=2), PodMetrics(waiting=0), prompt_tokens=400,
                   matched={address(0): 10})
    assert SCORER.score(c) == [0.0, 0.0] and not SCORER.claims(c, 0)


def test_its_native_twin_reads_its_parameters_by_name():
    assert SCORER.native_params() == {"prefix_queue_tokens": 64,
                                      "tokens_per_block": TOKENS_PER_BLOCK}
