"""The Gateway API Inference Extension scheduler's own test cases (its Go tests at v0.1, v0.3,
v0.4 and v1.x, transcribed in tests/fixtures/upstream/gie-scheduler/cases.yaml beside the
stored Go files) run against the llm policy, on its native core and its Python reference.

GIE's schedulers differ from release to release (a filter chain in v0.x, weighted scorers in
v1.x), so each case is held to what it states about the request, not to GIE's internals:
- a case that names the pick (or the candidates a filter chain keeps) must get that pod (or
  one of them) from the llm policy as configured by default;
- the v1.x scheduler case must also get GIE's pick and score under GIE's own profile (every
  scorer at weight 1, the queue scorer with no span);
- the v1.x scorer cases (queue, KV cache, LoRA affinity, prefix) must give GIE's scores on
  the Python core, and rank the pods in that order on the native core (which returns a
  ranking, not scores);
- a sheddable request to a saturated pool is shed; no pods is an error (503).
The v0.3 soft-affinity case draws the affinity pod 75% of the time; the llm policy does not
draw, it picks the affinity pod every time (GIE's 0.999 default does nearly so too). v0.4's
TestSchedulePlugins (stub filters, scorers and picker checking the framework's plumbing) has
no counterpart: the llm policy's scorers are its own, each tested in tests/balancer/policy."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from llmtraffic.balancer.policy import native
from llmtraffic.balancer.policy.kvcache import KVCacheScorer
from llmtraffic.balancer.policy.llm import LLMPolicy
from llmtraffic.balancer.policy.filters import saturated, usable
from llmtraffic.balancer.policy.lora import LoRAScorer
from llmtraffic.balancer.policy.prefix import (TOKENS_PER_BLOCK, PrefixIndex, block_hashes,
                                               net_saved)
from llmtraffic.balancer.policy.queue import QueueScorer
from llmtraffic.balancer.policy.request import LLMRequest, Pick, Shed
from llmtraffic.balancer.policy.scorer import Candidates
from llmtraffic.balancer.policy.settings import PolicyConfig
from llmtraffic.contracts.store import MetricsStore, Pod, PodMetrics
from tests.balancer.test_policy import core  # noqa: F401  (autouse: both cores)

NOW = 100.0
CASES_FILE = (Path(__file__).parents[2] / "fixtures" / "upstream" / "gie-scheduler"
              / "cases.yaml")
CASES = {c["name"]: c for c in yaml.safe_load(CASES_FILE.read_text())["cases"]}
#: GIE v1.x's profile in its scheduler test: every scorer at weight 1; its queue scorer
#: spans any spread.
GIE_V1 = PolicyConfig(scorers={"kv": 1, "queue": 1, "prefix": 1, "lora": 1}, queue_span=0)


def case(name: str) -> dict:
    return CASES[name]


def metrics_of(pod: dict) -> PodMetrics:
    return PodMetrics(waiting=pod.get("waiting_queue_size", 0),
                      kv_usage=pod.get("kv_cache_usage", 0.0),
                      running_adapters=tuple(pod.get("active_adapters") or {}),
                      waiting_adapters=tuple(pod.get("waiting_adapters") or {}),
                      max_lora=pod.get("max_adapters", 0),
                      block_size=pod.get("cache_block_size", 0),
                      num_gpu_blocks=pod.get("cache_num_gpu_blocks", 0))


def fleet(pods: list[dict]) -> tuple[MetricsStore, dict[str, str]]:
    """A store holding the case's pods, freshly scraped; address -> the case's pod name."""
    store = MetricsStore(stale_after=2.0)
    names = {f"10.0.0.{i}:8000": p["name"] for i, p in enumerate(pods)}
    store.set_pods([Pod(name, address, {}, "pool") for address, name in names.items()])
    for (address, _), p in zip(names.items(), pods):
        store.update(address, metrics_of(p), NOW)
    return store, names


def request_of(c: dict, prompt: str = "hello") -> LLMRequest:
    r = c.get("request") or {}
    target = r.get("target_model") or r.get("model") or "model"
    crit = "Sheddable" if r.get("critical") is False else "Critical"
    return LLMRequest(model=r.get("model", target), target_model=target, adapter=target,
                      prompt=prompt, prompt_tokens=len(prompt) // 4, criticality=crit,
                      pool="pool")


def pick(c: dict, config: PolicyConfig | None = None, seed: int = 1) -> tuple[Pick | Shed,
                                                                             dict[str, str]]:
    store, names = fleet(c["pods"])
    cfg = (config or PolicyConfig()).model_copy(update={"fallbacks": max(0, len(names) - 1)})
    return LLMPolicy(cfg, seed=seed).pick(request_of(c), store.snapshot(NOW)), names


def candidates(c: dict, pods: list[dict] | None = None) -> Candidates:
    store, _ = fleet(c["pods"] if pods is None else pods)
    states = list(store.snapshot(NOW).pods)
    queues = [p.queue for p in states]
    return Candidates(request_of(c), states, queues, min(queues, default=0),
                      max(queues, default=0), {}, {})


# ---- picks: v0.1 / v0.3 filter chains, v0.4 and v1.x schedulers ---------------------------

@pytest.mark.parametrize("name", ["default-filter-critical", "default-filter-sheddable-accepted",
                                  "schedule-critical", "schedule-sheddable-accepted",
                                  "v1-schedule-finds-optimal"])
def test_the_llm_policy_picks_what_gie_picks(name):
    c = case(name)
    want = c["expect"].get("candidates") or [c["expect"]["pick"]]
    p, names = pick(c)
    assert isinstance(p, Pick), p
    assert names[p.address] in want, (names[p.address], want, p.reason)


@pytest.mark.parametrize("name", ["default-filter-sheddable-dropped", "schedule-sheddable-dropped"])
def test_a_sheddable_request_to_a_saturated_pool_is_shed(name):
    c = case(name)
    assert c["expect"]["shed"] is True
    p, _ = pick(c)
    assert isinstance(p, Shed) and p.status == 429, p
    # the same pool still serves a critical request
    critical = {**c, "request": {**c["request"], "critical": True}}
    assert isinstance(pick(critical)[0], Pick)


@pytest.mark.parametrize("name", ["schedule-no-pods", "v1-schedule-no-endpoints"])
def test_no_pods_is_an_error(name):
    c = case(name)
    assert c["expect"]["error"] is True and c["pods"] == []
    p, _ = pick(c)
    assert isinstance(p, Shed) and p.status == 503, p


def test_gie_v1_profile_gives_gies_pick_and_score():
    """GIE v1.x's scheduler test: weights 1, pod2 wins with 2.8 (KV 0.8 + queue 1 + LoRA 1
    + prefix 0); the same profile here picks pod2, and the Python reference's sum of its
    scorers for pod2 is 2.8."""
    c = case("v1-schedule-finds-optimal")
    p, names = pick(c, GIE_V1)
    assert names[p.address] == c["expect"]["pick"]
    cands = candidates(c)
    total = 0.0
    for s in (QueueScorer(GIE_V1), KVCacheScorer(GIE_V1), LoRAScorer(GIE_V1)):
        total += s.score(cands)[1]
    assert total == pytest.approx(c["expect"]["pick_score"], abs=1e-4)


def test_soft_lora_affinity_always_goes_to_the_pod_running_the_adapter():
    """GIE v0.3 draws the affinity pod 75% of the time (threshold set to 0.75 by the test;
    0.999 by default): here it is every time, and each call returns exactly one pod."""
    c = case("lora-soft-affinity-distribution")
    store, names = fleet(c["pods"])
    policy = LLMPolicy(seed=3)
    got = {n: 0 for n in names.values()}
    iterations = 2000
    for _ in range(iterations):
        p = policy.pick(request_of(c), store.snapshot(NOW))
        got[names[p.address]] += 1
    assert sum(got.values()) == iterations
    assert got["affinity-pod"] / iterations >= c["expect"]["distribution"]["affinity-pod"]


# ---- the v0.x filter functions, as the llm policy's preferences -----------------------------

@pytest.mark.parametrize("name", ["least-queuing", "least-kv-cache", "low-lora-cost"])
def test_the_pick_is_among_what_each_gie_filter_keeps(name):
    c = case(name)
    p, names = pick(c)
    assert names[p.address] in c["expect"]["candidates"], (names[p.address], p.reason)


@pytest.mark.parametrize("name", ["least-queuing-empty", "least-kv-cache-empty"])
def test_an_empty_pool_gives_no_pick(name):
    p, _ = pick(case(name))
    assert isinstance(p, Shed) and p.status == 503


def test_saturation_predicate_matches_gies():
    """noQueueAndLessThanKVCacheThresholdPredicate(0, 0.8): only idx0 qualifies, so a pool of
    idx1 and idx2 alone is saturated and one with idx0 is not."""
    c = case("no-queue-and-kv-below-threshold")
    q, kv = c["config"]["queue_threshold"], c["config"]["kv_cache_threshold"]
    store, names = fleet(c["pods"])
    pods = usable(store.snapshot(NOW).pods)
    keep = [names[p.pod.address] for p in pods if not saturated([p], q, kv)]
    assert keep == c["expect"]["candidates"]
    assert saturated([p for p in pods if names[p.pod.address] != "idx0"], q, kv)


# ---- load can beat LoRA affinity ---------------------------------------------------------------

def test_a_long_queue_and_full_cache_outweigh_a_free_adapter_slot():
    """The issue's case, as GIE v0.x's filter chain (queue over the LoRA threshold is
    filtered before LoRA affinity) and v1.x's equal weights decide it: a new adapter goes to
    the idle pod whose adapter slots are full, not to one with 500 waiting and a 95% full KV
    cache that has a free slot."""
    c = {"request": {"target_model": "new-adapter"}, "pods": [
        {"name": "busy", "waiting_queue_size": 500, "kv_cache_usage": 0.95, "max_adapters": 4,
         "active_adapters": {"a": 1}},
        {"name": "idle", "waiting_queue_size": 0, "kv_cache_usage": 0.05, "max_adapters": 2,
         "active_adapters": {"a": 1, "b": 1}}]}
    for config in (PolicyConfig(), GIE_V1):
        p, names = pick(c, config)
        assert names[p.address] == "idle", (config.scorers, p.reason)


def test_lora_affinity_still_wins_against_a_one_request_queue_difference():
    """What LoRA affinity is for: one more queued request does not move an adapter's request
    away from the pod running it (under GIE's queue scorer without a span, it would)."""
    c = {"request": {"target_model": "sql-lora"}, "pods": [
        {"name": "running", "waiting_queue_size": 3, "kv_cache_usage": 0.5, "max_adapters": 4,
         "active_adapters": {"sql-lora": 1}},
        {"name": "free-slot", "waiting_queue_size": 2, "kv_cache_usage": 0.5, "max_adapters": 4,
         "active_adapters": {"x": 1}}]}
    p, names = pick(c)
    assert names[p.address] == "running" and p.reason == "llm:lora"


def test_no_single_scorer_outweighs_all_the_others():
    """The default weights' honest ranges: each term's full range (weight x 1) is less than
    the other terms' together."""
    w = PolicyConfig().scorers
    for name, weight in w.items():
        assert weight < sum(v for k, v in w.items() if k != name), (name, w)


# ---- the v1.x scorer plugins' own cases ----------------------------------------------------------

SCORER_CASES = {
    "queue": ["v1-queue-different", "v1-queue-same", "v1-queue-zero"],
    "kv": ["v1-kvcache-different", "v1-kvcache-same", "v1-kvcache-zero", "v1-kvcache-full"],
    "lora": ["v1-lora-target-active", "v1-lora-target-waiting", "v1-lora-no-space",
             "v1-lora-mixed", "v1-lora-empty"],
}
SCORER_TYPES = {"queue": QueueScorer, "kv": KVCacheScorer, "lora": LoRAScorer}


@pytest.mark.parametrize("scorer,name", [(s, n) for s, names in SCORER_CASES.items()
                                         for n in names])
def test_each_scorer_gives_gies_scores(scorer, name, core):
    """Python core: GIE's scores to 1e-4 (its InDelta). Native core: the pick and its
    fallbacks, under that scorer alone, come in the order of GIE's scores."""
    c = case(name)
    want = dict(c["expect"]["scores"])
    if scorer == "lora":
        # the one deviation, on purpose: a pod publishing no adapter limit counts as having a
        # free slot (real vLLM has no lora_requests_info series before its first LoRA request,
        # tests/fixtures/vllm/idle.txt), where GIE scores it 0
        for p in c["pods"]:
            if not p.get("max_adapters") and p["name"] in want and want[p["name"]] == 0.0:
                want[p["name"]] = 0.8
    if not c["pods"]:
        p, _ = pick(c, PolicyConfig(scorers={scorer: 1.0}, queue_span=0))
        assert isinstance(p, Shed) and p.status == 503
        return
    if core == "python":
        got = SCORER_TYPES[scorer](GIE_V1).score(candidates(c))
        assert got == pytest.approx([want[p["name"]] for p in c["pods"]], abs=1e-4)
        return
    p, names = pick(c, PolicyConfig(scorers={scorer: 1.0}, queue_span=0))
    ranked = [names[a] for a in (p.address, *p.fallbacks)]
    assert sorted(ranked) == sorted(names.values())
    values = [want[n] for n in ranked]
    assert values == sorted(values, reverse=True), ranked
    assert want[ranked[0]] == max(want.values())


# ---- the v1.x prefix scorer's sequence ------------------------------------------------------------

def prefix_score(index, model: str, prompt: str, pods: list[str]) -> tuple[int, dict[str, float]]:
    """GIE's prefix score (matched blocks / the prompt's blocks) from the llm policy's own
    index and formula (`net_saved` with no queue difference), 4-character blocks as the
    test's (BlockSizeTokens 1 at 4 characters per token)."""
    hashes = (native.core.block_hashes if native.core else block_hashes)(model, prompt, 4)
    matched = index.match(hashes) if hashes else {}
    tokens = len(hashes) * TOKENS_PER_BLOCK
    return len(hashes), {p: net_saved(matched.get(p, 0), 0, 0, tokens) for p in pods}


def test_prefix_scores_follow_gies_completion_sequence():
    """TestPrefixPluginCompletion: each step's number of hashes, cached servers and scores,
    then the pick is recorded in the index (as GIE's PreRequest)."""
    c = case("v1-prefix-completion-sequence")
    index = (native.core.PrefixIndex if native.core else PrefixIndex)(1000)
    pods = [p["name"] for p in c["pods"]]
    for step in c["steps"]:
        r, want = step["request"], step["expect"]
        n, scores = prefix_score(index, r["target_model"], r["prompt"], pods)
        assert n == want["prefix_hashes"], r
        assert sum(1 for s in scores.values() if s > 0) == want["cached_servers"], r
        for pod, score in want["scores"].items():
            assert scores[pod] == pytest.approx(score, abs=1e-4), (r, pod)
        hashes = (native.core.block_hashes if native.core else block_hashes)(
            r["target_model"], r["prompt"], 4)
        for picked in step["then_picked"].values():
            index.add(picked, hashes)


def test_the_prefix_term_is_saved_prefill_as_a_fraction_of_the_prompt():
    """The llm policy's prefix score equals GIE's matched/total when no queue differs; a
    longer queue on the holder reduces it (load can beat prefix affinity)."""
    assert net_saved(2, 0, 64, 3 * 32) == pytest.approx(2 / 3)
    assert net_saved(2, 1, 64, 3 * 32) == 0.0
    assert math.isclose(net_saved(3, 0, 64, 3 * 32), 1.0)
