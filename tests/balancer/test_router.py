"""`Router.decide` without HTTP: a target is a LoRA adapter unless a pod in the pool reports it
as its base model, and that judgement follows the pods' scrapes (it is cached between them)."""

from __future__ import annotations

from llmtraffic.balancer.config import load_resources
from llmtraffic.balancer.policy.registry import make_policy
from llmtraffic.balancer.router import Router
from llmtraffic.contracts.store import MetricsStore, Pod, PodMetrics
from tests.balancer.conftest import LABELS, POOL, SEED_FILES

NOW = 10.0


def test_adapter_or_base_model_follows_what_the_pods_report():
    store = MetricsStore()
    store.set_pods([Pod("vllm-0", "10.0.0.1:8000", dict(LABELS), POOL)])
    router = Router(load_resources(SEED_FILES), store, make_policy("llm", seed=1),
                    clock=lambda: NOW)
    body = {"model": "tweet-summary", "prompt": "hi"}

    def adapter() -> str | None:
        return router.decide("test.com", body, chat=False).request.adapter

    store.update("10.0.0.1:8000", PodMetrics(models=("meta-llama/Llama-2-7b-hf",)), NOW)
    assert adapter() == "tweet-summary"  # a LoRA adapter on the Llama-2 pod
    assert adapter() == "tweet-summary"  # (now from the cache)
    store.update("10.0.0.1:8000", PodMetrics(models=("tweet-summary",)), NOW)
    assert adapter() is None  # the pod now serves it as its base model
    store.update("10.0.0.1:8000", PodMetrics(models=("tweet-summary",), waiting=3.0), NOW)
    assert adapter() is None
    store.set_pods([Pod("vllm-1", "10.0.0.2:8000", dict(LABELS), POOL)])  # no metrics yet
    assert adapter() == "tweet-summary"
