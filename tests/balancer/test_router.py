"""`Router.decide` without HTTP: a target is a LoRA adapter unless a pod in the pool reports it
as its base model, and that judgement follows the pods' scrapes (it is cached between them);
GIE v1's objectives set a request's priority (negative: shed when saturated) and its rewrites
split a model's traffic by weight."""

from __future__ import annotations

import math

import pytest
from multidict import CIMultiDict

from llmtraffic.balancer.config import load_resources
from llmtraffic.balancer.policy.registry import make_policy
from llmtraffic.balancer.router import ApiError, Router
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


# ---- GIE v1: InferenceObjective priority, InferenceModelRewrite splits -----------------------
GA = """
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: ga, labels: null}
spec:
  selector: {matchLabels: {app: ga}}
  targetPorts: [{number: 8000}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: batch}
spec: {priority: -1, poolRef: {group: inference.networking.k8s.io, name: ga}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: interactive}
spec: {priority: 10, poolRef: {group: inference.networking.k8s.io, name: ga}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: {name: canary}
spec:
  poolRef: {group: inference.networking.k8s.io, name: ga}
  rules:
  - matches: [{model: {type: Exact, value: food-review}}]
    targets: [{modelRewrite: food-review-v1, weight: 90},
              {modelRewrite: food-review-v2, weight: 10}]
"""


def ga_router(tmp_path, waiting: float, kv: float) -> Router:
    path = tmp_path / "ga.yaml"
    path.write_text(GA)
    store = MetricsStore()
    store.set_pods([Pod("ga-0", "10.0.0.1:8000", {"app": "ga"}, "ga")])
    store.update("10.0.0.1:8000", PodMetrics(waiting=waiting, kv_usage=kv,
                                             models=("base",)), NOW)
    return Router(load_resources([str(path)]), store, make_policy("llm", seed=1),
                  clock=lambda: NOW, seed=3)


def test_a_rewrite_splits_traffic_by_weight_and_other_models_pass_through(tmp_path):
    router = ga_router(tmp_path, 0.0, 0.1)
    body = {"model": "food-review", "prompt": "hi"}
    targets = [router.decide("h", body, chat=False).body["model"] for _ in range(2000)]
    assert set(targets) == {"food-review-v1", "food-review-v2"}
    assert 0.87 < targets.count("food-review-v1") / len(targets) < 0.93
    d = router.decide("h", {"model": "base", "prompt": "hi"}, chat=False)
    assert d.body["model"] == "base" and d.model.kind == ""  # no InferenceModel: as sent


def test_negative_priority_is_shed_when_saturated_the_rest_scheduled(tmp_path):
    """GIE "Priority and Capacity": when every pod is over the thresholds, requests whose
    objective has a negative priority get 429; the others are scheduled."""
    saturated = ga_router(tmp_path, waiting=50.0, kv=0.95)
    body = {"model": "food-review", "prompt": "hi"}
    try:
        saturated.decide("h", body, chat=False, objective="batch")
        raise AssertionError("a negative priority was not shed")
    except ApiError as e:
        assert e.status == 429 and "priority -1" in e.message
    for objective in (None, "interactive", "no-such-objective"):  # default priority 0
        d = saturated.decide("h", body, chat=False, objective=objective)
        assert d.pick.address == "10.0.0.1:8000"
    d = saturated.decide("h", body, chat=False, objective="interactive")
    assert (d.request.priority, d.request.criticality) == (10, "Critical")
    idle = ga_router(tmp_path, waiting=0.0, kv=0.1)
    d = idle.decide("h", body, chat=False, objective="batch")
    assert (d.request.priority, d.model.criticality) == (-1, "Sheddable")  # not saturated


def test_inference_model_criticality_keeps_its_behaviour_as_a_priority():
    store = MetricsStore()
    store.set_pods([Pod("vllm-0", "10.0.0.1:8000", dict(LABELS), POOL)])
    store.update("10.0.0.1:8000", PodMetrics(waiting=50.0, kv_usage=0.95), NOW)
    router = Router(load_resources(SEED_FILES), store, make_policy("llm", seed=1),
                    clock=lambda: NOW)
    d = router.decide("test.com", {"model": "tweet-summary", "prompt": "hi"}, chat=False)
    assert (d.model.criticality, d.request.priority) == ("Critical", 1)  # scheduled


# ---- LLMRoute rules evaluated, weighted pools split -----------------------------------------
#: ASM's documented LLMRoute shape (LLMRoute CRD reference, v1beta1: a header rule, then a
#: default rule), with in-cluster pools as backends beside the provider, and two more rules
#: showing the other StringMatch kinds.
ROUTES = "".join(f"""
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {{name: {name}}}
spec: {{selector: {{matchLabels: {{app: {name}}}}}, targetPorts: [{{number: 8000}}]}}
---""" for name in ("premium", "standard")) + """
apiVersion: istio.alibabacloud.com/v1beta1
kind: LLMRoute
metadata: {name: llama-route}
spec:
  host: llama.example.com
  rules:
  - name: vip-route
    matches:
    - headers:
        user-type:
          exact: subscriber
    backendRefs:
    - backendRef: {group: inference.networking.k8s.io, kind: InferencePool, name: premium}
  - name: external
    matches: [{headers: {x-provider: {prefix: dash}}}]
    backendRefs: [{providerHost: dashscope.aliyuncs.com}]
  - name: canary
    matches: [{headers: {x-canary: {}, x-team: {regex: "ml|search"}}}]
    backendRefs:
    - {backendRef: {name: premium}, weight: 3}
    - {backendRef: {name: standard}, weight: 1}
  - name: tenants
    matches: [{headers: {x-tenant: {exact: a}}}, {headers: {x-tenant: {exact: b}}}]
    backendRefs: [{backendRef: {name: standard}}]
"""
DEFAULT_RULE = """
  - backendRefs:
    - {backendRef: {name: standard}, weight: 90}
    - {providerHost: dashscope.aliyuncs.com, weight: 10}
"""


def route_router(tmp_path, text: str, seed: int = 5) -> Router:
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    store = MetricsStore()
    store.set_pods([Pod("premium-0", "10.0.1.1:8000", {"app": "premium"}, "premium"),
                    Pod("standard-0", "10.0.2.1:8000", {"app": "standard"}, "standard")])
    return Router(load_resources([str(path)]), store, make_policy("llm", seed=1),
                  clock=lambda: NOW, seed=seed)


def pool_of(router: Router, headers: dict[str, str]) -> str:
    return router.decide("llama.example.com", {"model": "m", "prompt": "hi"}, chat=False,
                         headers=CIMultiDict(headers)).pool.name


def test_llmroute_rules_are_evaluated_in_order_on_the_request_headers(tmp_path):
    router = route_router(tmp_path, ROUTES + DEFAULT_RULE)
    assert pool_of(router, {"User-Type": "subscriber"}) == "premium"  # names fold case
    assert pool_of(router, {"user-type": "subscriber", "x-tenant": "a"}) == "premium"  # first
    assert pool_of(router, {"user-type": "Subscriber"}) == "standard"  # values do not fold
    assert pool_of(router, {"x-tenant": "b"}) == "standard"  # either match of a rule
    assert pool_of(router, {}) == "standard"  # the default rule
    with pytest.raises(ApiError) as e:
        pool_of(router, {"x-provider": "dashscope"})
    assert e.value.status == 404
    assert "LLMRoute 'llama-route' rule 'external'" in e.value.message
    assert "providerHost dashscope.aliyuncs.com" in e.value.message


def test_a_request_no_rule_matches_gets_404_naming_the_route(tmp_path):
    router = route_router(tmp_path, ROUTES)  # no default rule
    assert pool_of(router, {"x-tenant": "a"}) == "standard"
    for headers in ({}, {"x-tenant": "c"}, {"x-canary": "1", "x-team": "mlops"}):
        with pytest.raises(ApiError) as e:
            pool_of(router, headers)
        assert e.value.status == 404
        assert "no rule of LLMRoute 'llama-route' (host llama.example.com)" in e.value.message
        assert "vip-route: user-type exact 'subscriber'" in e.value.message


def test_weighted_pools_of_a_rule_split_requests_by_weight(tmp_path):
    """3:1 over n requests: the share of `premium` is within 5 standard deviations of a
    binomial(n, 0.75) (a false failure once in ~3.5 million seeds)."""
    router = route_router(tmp_path, ROUTES)
    n, p = 4000, 0.75
    picks = [pool_of(router, {"x-canary": "", "x-team": "search"}) for _ in range(n)]
    share = picks.count("premium") / n
    assert abs(share - p) <= 5 * math.sqrt(p * (1 - p) / n)
    assert set(picks) == {"premium", "standard"}
    again = route_router(tmp_path, ROUTES)  # seeded: the same split again
    assert [pool_of(again, {"x-canary": "", "x-team": "search"}) for _ in range(n)] == picks
