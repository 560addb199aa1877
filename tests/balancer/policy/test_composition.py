"""The llm policy composes (scorer, weight) pairs from `PolicyConfig.scorers`: names from the
registry, in the configured order; `<name>_weight` still sets one weight; a scorer with no
native twin runs on the Python core. Every test runs on both cores."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmtraffic.balancer.policy import native
from llmtraffic.balancer.policy.kvcache import KVCacheScorer
from llmtraffic.balancer.policy.llm import LLMPolicy
from llmtraffic.balancer.policy.lora import LoRAScorer
from llmtraffic.balancer.policy.prefix import PrefixScorer
from llmtraffic.balancer.policy.queue import QueueScorer
from llmtraffic.balancer.policy.request import LLMRequest
from llmtraffic.balancer.policy.scorer import Candidates, Scorer
from llmtraffic.balancer.policy.scorers import SCORERS
from llmtraffic.balancer.policy.settings import DEFAULT_SCORERS, PolicyConfig
from llmtraffic.contracts.store import MetricsStore, Pod, PodMetrics
from tests.balancer.policy.candidates import NOW, address
from tests.balancer.test_policy import core  # noqa: F401  (every test on both cores)


def test_the_defaults_in_their_order():
    assert list(PolicyConfig().scorers.items()) == list(DEFAULT_SCORERS.items()) == [
        ("queue", 6.0), ("kv", 2.0), ("lora", 8.0), ("prefix", 8.0)]
    policy = LLMPolicy()
    assert [(type(s), w) for s, w in policy.scorers] == [
        (QueueScorer, 6.0), (KVCacheScorer, 2.0), (LoRAScorer, 8.0), (PrefixScorer, 8.0)]


def test_name_weight_spellings_set_one_weight():
    cfg = PolicyConfig.model_validate({"queue_weight": 1, "prefix_weight": 0})
    assert cfg.scorers == {"queue": 1.0, "kv": 2.0, "lora": 8.0, "prefix": 0.0}
    assert (cfg.queue_weight, cfg.prefix_weight) == (1.0, 0.0)
    cfg = PolicyConfig.model_validate({"scorers": {"prefix": 2, "queue": 1}, "kv_weight": 4})
    assert list(cfg.scorers.items()) == [("prefix", 2.0), ("queue", 1.0), ("kv", 4.0)]
    assert cfg.lora_weight == 0.0  # not configured: it does not run


def test_a_bad_scorer_is_refused_saying_which_and_what_exists():
    with pytest.raises(ValidationError, match=r"unknown scorer 'fastest'.*queue, kv, lora"):
        PolicyConfig(scorers={"fastest": 1})
    with pytest.raises(ValidationError, match=r"scorer 'kv': weight -1"):
        PolicyConfig(kv_weight=-1)


def store_with(*metrics: PodMetrics) -> MetricsStore:
    store = MetricsStore(stale_after=2.0)
    store.set_pods([Pod(f"p{i}", address(i), {}, "pool") for i in range(len(metrics))])
    for i, m in enumerate(metrics):
        store.update(address(i), m, NOW)
    return store


def req(adapter: str | None = None, prompt: str = "hello") -> LLMRequest:
    return LLMRequest(model=adapter or "base", target_model=adapter or "base",
                      adapter=adapter, prompt=prompt, prompt_tokens=len(prompt) // 4,
                      criticality="Critical", pool="pool")


def test_only_the_configured_scorers_count():
    """Queue alone picks the shortest queue even against a running adapter; LoRA alone
    picks the adapter even against a long queue."""
    s = store_with(PodMetrics(waiting=9, running_adapters=("a",), max_lora=4),
                   PodMetrics(waiting=0, running_adapters=("b",), max_lora=4)).snapshot(NOW)
    assert LLMPolicy(PolicyConfig(scorers={"queue": 1}), seed=1).pick(req("a"), s).address \
        == address(1)
    pick = LLMPolicy(PolicyConfig(scorers={"lora": 1}), seed=1).pick(req("a"), s)
    assert (pick.address, pick.reason) == (address(0), "llm:lora")


def test_a_scorer_at_weight_0_adds_nothing_and_prefix_affinity_then_indexes_nothing():
    prompt = "a long shared system prompt, worth caching. " * 30
    store = store_with(PodMetrics(), PodMetrics(), PodMetrics())
    policy = LLMPolicy(PolicyConfig(prefix_weight=0), seed=2)
    reasons = {policy.pick(req(prompt=prompt + f"q{i}"), store.snapshot(NOW)).reason
               for i in range(6)}
    assert reasons == {"llm:load"}
    assert all(policy.prefix.entries(address(i)) == 0 for i in range(3))


class FewestInFlight(Scorer):
    """What a new scorer is: a name, a formula, its test (here), one registry entry."""

    name = "inflight"

    def score(self, c: Candidates) -> list[float]:
        most = max(p.inflight for p in c.pods) or 1
        return [1.0 - p.inflight / most for p in c.pods]


def test_a_scorer_without_a_native_twin_runs_on_the_python_core(monkeypatch):
    monkeypatch.setitem(SCORERS, "inflight", FewestInFlight)
    cfg = PolicyConfig(scorers={"inflight": 1.0})
    store = store_with(PodMetrics(), PodMetrics(), PodMetrics())
    for i, n in ((0, 3), (1, 1), (2, 2)):
        for _ in range(n):
            store.acquire(address(i))
    policy = LLMPolicy(cfg, seed=1)
    assert policy.native is False
    assert policy.pick(req(), store.snapshot(NOW)).address == address(1)
    if native.core is not None:
        assert "scorer(s) inflight have no native twin" in policy.startup_warning()
        with pytest.raises(RuntimeError, match="inflight have no native twin"):
            LLMPolicy(cfg, native=True)
