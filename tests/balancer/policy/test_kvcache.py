"""The KV-cache scorer: 1 - usage, usage clamped to 0..1; stale pods score as empty."""

from __future__ import annotations

import math

import pytest

from llmtraffic.balancer.policy.kvcache import KVCacheScorer
from llmtraffic.balancer.policy.settings import PolicyConfig
from llmtraffic.contracts.store import PodMetrics
from tests.balancer.policy.candidates import candidates


def test_one_minus_usage():
    c = candidates(PodMetrics(kv_usage=0.25), PodMetrics(kv_usage=0.9), PodMetrics())
    assert KVCacheScorer(PolicyConfig()).score(c) == pytest.approx([0.75, 0.1, 1.0])


def test_usage_above_one_scores_zero_and_nonsense_scores_as_empty():
    c = candidates(PodMetrics(kv_usage=1.2), PodMetrics(kv_usage=math.nan),
                   PodMetrics(kv_usage=0.5), stale=(2,))
    assert KVCacheScorer(PolicyConfig()).score(c) == [0.0, 1.0, 1.0]
