"""The LoRA-affinity scorer: running 1.0 > free slot 0.8 > waiting for a slot 0.6 > 0; no
opinion on base-model requests; it decides a pick whose winner runs the adapter."""

from __future__ import annotations

from llmtraffic.balancer.policy.lora import LoRAScorer
from llmtraffic.balancer.policy.settings import PolicyConfig
from llmtraffic.contracts.store import PodMetrics
from tests.balancer.policy.candidates import candidates

PODS = (PodMetrics(running_adapters=("a",), max_lora=2),
        PodMetrics(running_adapters=("b",), max_lora=2),
        PodMetrics(running_adapters=("b", "c"), waiting_adapters=("a",), max_lora=2),
        PodMetrics(running_adapters=("b", "c"), max_lora=2),
        PodMetrics(running_adapters=("b", "c"), max_lora=0),  # no limit: a free slot
        None)  # never scraped: a free slot


def test_scores_in_order_of_affinity():
    c = candidates(*PODS, adapter="a")
    assert LoRAScorer(PolicyConfig()).score(c) == [1.0, 0.8, 0.6, 0.0, 0.8, 0.8]


def test_no_opinion_on_base_model_requests():
    c = candidates(*PODS)
    s = LoRAScorer(PolicyConfig())
    assert s.score(c) is None and not s.claims(c, 0)


def test_claims_a_winner_running_the_adapter_only():
    c = candidates(*PODS, adapter="a")
    s = LoRAScorer(PolicyConfig())
    assert [s.claims(c, j) for j in range(len(PODS))] == [True] + [False] * 5
