"""Pure policies on hand-built snapshots: each scorer's formula, affinity, in-flight
accounting against herding, stale-metrics fallback, shedding by criticality. Every test
runs twice: with the llm policy's native core and with its pure-Python reference."""

from __future__ import annotations

from collections import Counter

import math

import pytest

from llmtraffic.balancer.policy.filters import saturated
from llmtraffic.balancer.policy.kvcache import kv_score
from llmtraffic.balancer.policy.llm import LLMPolicy, PolicyConfig
from llmtraffic.balancer.policy.lora import lora_score
from llmtraffic.balancer.policy.prefix import BLOCK_BYTES, PrefixIndex, block_hashes
from llmtraffic.balancer.policy import native
from llmtraffic.balancer.policy.queue import queue_score
from llmtraffic.balancer.policy.registry import make_policy
from llmtraffic.balancer.policy.request import LLMRequest, Pick, Shed
from llmtraffic.contracts.store import MetricsStore, Pod, PodMetrics

NOW = 100.0


@pytest.fixture(autouse=True, params=["native", "python"])
def core(request, monkeypatch):
    """The llm policy (and `prefix_index`) use the native core, or the Python reference."""
    if request.param == "native":
        assert native.core is not None, f"native core not built: {native.missing}"
    else:
        monkeypatch.setattr(native, "core", None)
    return request.param


def prefix_index(lru_per_pod: int):
    """The prefix index the llm policy would use now."""
    return (native.core.PrefixIndex if native.core else PrefixIndex)(lru_per_pod)


def hashes_of(model: str, prompt: str) -> list[int]:
    return (native.core.block_hashes if native.core else block_hashes)(model, prompt)


def store_with(*metrics: PodMetrics | None, stale: tuple[int, ...] = (),
               errors: tuple[int, ...] = ()) -> MetricsStore:
    store = MetricsStore(stale_after=2.0)
    store.set_pods([Pod(f"p{i}", f"10.0.0.{i}:8000", {"app": "x"}, "pool")
                    for i in range(len(metrics))])
    for i, m in enumerate(metrics):
        if m is not None:
            store.update(f"10.0.0.{i}:8000", m, NOW - (10.0 if i in stale else 0.0))
        if i in errors:
            store.mark_error(f"10.0.0.{i}:8000", "connect_error", NOW)
    return store


def req(adapter: str | None = None, prompt: str = "hello", crit: str = "Critical"):
    return LLMRequest(model=adapter or "base", target_model=adapter or "base",
                      adapter=adapter, prompt=prompt, prompt_tokens=len(prompt) // 4,
                      criticality=crit, pool="pool")


def idx(pick: Pick | Shed) -> int:
    assert isinstance(pick, Pick), pick
    return int(pick.address.split(".")[3].split(":")[0])


# ---- scorer formulas -----------------------------------------------------------------------
def test_queue_score_formula():
    assert [queue_score(q, 0, 10) for q in (0, 5, 10)] == [1.0, 0.5, 0.0]
    assert queue_score(3, 3, 0) == 1.0
    assert queue_score(3, 2, 16) == 15 / 16  # a spread under the span scores in proportion


def test_kv_score_formula():
    s = store_with(PodMetrics(kv_usage=0.25), PodMetrics(kv_usage=0.9)).snapshot(NOW)
    assert [kv_score(p) for p in s.pods] == pytest.approx([0.75, 0.1])


def test_lora_score_order():
    s = store_with(PodMetrics(running_adapters=("a",), max_lora=2),
                   PodMetrics(running_adapters=("b",), max_lora=2),
                   PodMetrics(running_adapters=("b", "c"), waiting_adapters=("a",), max_lora=2),
                   PodMetrics(running_adapters=("b", "c"), max_lora=2)).snapshot(NOW)
    assert [lora_score(p, "a") for p in s.pods] == [1.0, 0.8, 0.6, 0.0]
    assert [lora_score(p, None) for p in s.pods] == [1.0] * 4


def test_prefix_index_leading_match_and_lru():
    h = hashes_of("m", "x" * BLOCK_BYTES * 5)
    assert len(h) == 5
    assert hashes_of("other", "x" * BLOCK_BYTES * 5)[0] != h[0]  # model mixed into block 0
    index = prefix_index(8)
    index.add("a", h[:3])
    index.add("b", h)
    assert index.match(h) == {"a": 3, "b": 5}
    index.add("a", hashes_of("m", "y" * BLOCK_BYTES * 8))  # pushes a's old entries out
    assert index.match(h) == {"b": 5}
    index.forget("b")
    assert index.match(h) == {}


def test_prefix_index_is_sized_from_each_pods_kv_cache():
    """A pod cannot cache more prefix than its KV cache holds: its index keeps
    factor x num_gpu_blocks x block_size / 16 entries, so the balancer's memory stays
    bounded by the fleet rather than growing toward 31,250 entries per pod."""
    small = PodMetrics(num_gpu_blocks=16, block_size=16)  # 256 tokens -> 16 entries at x2
    store = store_with(small, PodMetrics())  # the second pod has no cache_config_info
    policy = LLMPolicy(PolicyConfig(queue_weight=0, kv_weight=0), seed=1)
    snap = store.snapshot(NOW)
    assert policy.index_limit(snap.pods[0]) == 16
    assert policy.index_limit(snap.pods[1]) == policy.config.prefix_lru_per_pod
    assert LLMPolicy(PolicyConfig(prefix_capacity_factor=0)).index_limit(snap.pods[0]) \
        == policy.config.prefix_lru_per_pod
    for i in range(40):  # distinct 5-block prompts to every pod the policy picks
        policy.pick(req(prompt=f"{i:04d}" * (BLOCK_BYTES // 4) * 5), snap)
    assert 0 < policy.prefix.entries("10.0.0.0:8000") <= 16
    # a tokenizer twice as dense (2 bytes a token, learned from usage and carried in
    # the request's estimate) fits half the index blocks in the same cache
    assert policy.index_limit(snap.pods[0], bytes_per_token=2.0) == 8
    dense = LLMPolicy(PolicyConfig(queue_weight=0, kv_weight=0), seed=1)
    for i in range(40):
        prompt = f"{i:04d}" * (BLOCK_BYTES // 4) * 5
        dense.pick(LLMRequest(model="base", target_model="base", adapter=None, prompt=prompt,
                              prompt_tokens=len(prompt) // 2, pool="pool"), snap)
    assert 0 < dense.prefix.entries("10.0.0.0:8000") <= 8
    # a limit that shrinks (the pod restarted smaller) sheds the oldest entries at once
    index = prefix_index(100)
    index.add("a", hashes_of("m", "z" * BLOCK_BYTES * 50))
    index.add("a", hashes_of("m", "w" * BLOCK_BYTES), limit=10)
    assert index.entries("a") == 10
    assert index.match(hashes_of("m", "w" * BLOCK_BYTES)) == {"a": 1}


# ---- the llm policy ------------------------------------------------------------------------
def test_llm_prefers_pod_with_adapter_loaded_then_free_slot():
    policy = LLMPolicy(seed=1)
    s = store_with(PodMetrics(running_adapters=("x", "y"), max_lora=2),
                   PodMetrics(running_adapters=("sql-lora",), max_lora=2),
                   PodMetrics(running_adapters=("x",), max_lora=2)).snapshot(NOW)
    assert idx(policy.pick(req("sql-lora"), s)) == 1
    s2 = store_with(PodMetrics(running_adapters=("x", "y"), max_lora=2),
                    PodMetrics(running_adapters=("x",), max_lora=2)).snapshot(NOW)
    assert idx(policy.pick(req("sql-lora"), s2)) == 1


def test_llm_prefers_shorter_queue():
    policy = LLMPolicy(seed=1)
    s = store_with(PodMetrics(waiting=8), PodMetrics(waiting=1), PodMetrics(waiting=5))
    assert idx(policy.pick(req(), s.snapshot(NOW))) == 1


def test_prefix_affinity_returns_to_same_pod_but_not_when_overloaded():
    prompt = "system prompt shared by a group of requests. " * 40
    store = store_with(PodMetrics(), PodMetrics(), PodMetrics())
    policy = LLMPolicy(seed=3)
    first = policy.pick(req(prompt=prompt + "q1"), store.snapshot(NOW))
    again = [policy.pick(req(prompt=prompt + f"q{i}"), store.snapshot(NOW)) for i in range(5)]
    assert {p.address for p in again} == {first.address}
    assert all(p.reason == "llm:prefix" for p in again)
    # now that pod has a long queue: the prefix no longer wins
    i = idx(first)
    busy = [PodMetrics(waiting=(20 if k == i else 0)) for k in range(3)]
    for k, m in enumerate(busy):
        store.update(f"10.0.0.{k}:8000", m, NOW)
    assert idx(policy.pick(req(prompt=prompt + "q9"), store.snapshot(NOW))) != i


def test_inflight_accounting_spreads_a_burst_on_a_stale_snapshot():
    """100 picks between two scrapes: requests sent since the scrape count as queued, so
    the burst spreads instead of herding onto the pod that looked emptiest."""
    store = store_with(PodMetrics(waiting=0), PodMetrics(waiting=2), PodMetrics(waiting=2),
                       PodMetrics(waiting=2))
    policy = LLMPolicy(seed=4)
    counts: Counter[int] = Counter()
    for _ in range(100):
        p = policy.pick(req(), store.snapshot(NOW))
        store.acquire(p.address)
        counts[idx(p)] += 1
    assert max(counts.values()) <= 27
    assert min(counts.values()) >= 23


def test_stale_metrics_fall_back_to_inflight_counts():
    store = store_with(PodMetrics(waiting=0), PodMetrics(waiting=0), stale=(0, 1))
    snap = store.snapshot(NOW)
    assert not any(p.fresh for p in snap.pods)
    store.acquire("10.0.0.0:8000")
    store.acquire("10.0.0.0:8000")
    assert idx(LLMPolicy(seed=1).pick(req(), store.snapshot(NOW))) == 1


def test_failing_pod_is_avoided_while_others_are_healthy():
    store = store_with(PodMetrics(waiting=0), PodMetrics(waiting=9), errors=(0,))
    assert idx(LLMPolicy(seed=1).pick(req(), store.snapshot(NOW))) == 1
    alone = store_with(PodMetrics(), errors=(0,))
    assert idx(LLMPolicy(seed=1).pick(req(), alone.snapshot(NOW))) == 0  # last resort


def test_sheddable_is_shed_when_saturated_and_critical_never():
    full = store_with(PodMetrics(waiting=9, kv_usage=0.95), PodMetrics(waiting=7, kv_usage=0.5))
    policy = LLMPolicy(seed=1)
    shed = policy.pick(req(crit="Sheddable"), full.snapshot(NOW))
    assert isinstance(shed, Shed) and shed.status == 429 and shed.retry_after == 1.0
    assert isinstance(policy.pick(req(crit="Critical"), full.snapshot(NOW)), Pick)
    assert isinstance(policy.pick(req(crit="Standard"), full.snapshot(NOW)), Pick)
    ok = store_with(PodMetrics(waiting=9), PodMetrics(waiting=3, kv_usage=0.5))
    assert isinstance(policy.pick(req(crit="Sheddable"), ok.snapshot(NOW)), Pick)
    stale = store_with(PodMetrics(waiting=0), stale=(0,))
    assert saturated(list(stale.snapshot(NOW).pods), 5, 0.8)


def test_a_pod_reporting_nonsense_is_judged_by_its_inflight_count():
    """NaN, negative or infinite waiting counts or KV usage on a pod's page are not
    trusted: that pod's load is its in-flight count, and the others are still ranked."""
    bad = [PodMetrics(waiting=math.nan), PodMetrics(waiting=-1.0), PodMetrics(waiting=math.inf),
           PodMetrics(kv_usage=math.nan)]
    for m in bad:
        store = store_with(m, PodMetrics(waiting=4), PodMetrics(waiting=1))
        for _ in range(3):
            store.acquire("10.0.0.0:8000")
        assert store.snapshot(NOW).pods[0].queue == 3.0
        assert store.snapshot(NOW).pods[0].kv_usage == 0.0
        policy = LLMPolicy(seed=1)
        picks = [idx(policy.pick(req(), store.snapshot(NOW))) for _ in range(5)]
        assert picks == [2] * 5, (m, picks)


def test_no_pods_is_503():
    empty = MetricsStore()
    for name in ("llm", "round-robin", "random", "least-request"):
        out = make_policy(name, seed=1).pick(req(), empty.snapshot(NOW))
        assert isinstance(out, Shed) and out.status == 503


def test_fallbacks_are_distinct_other_pods():
    s = store_with(*(PodMetrics(waiting=i) for i in range(5))).snapshot(NOW)
    for name in ("llm", "round-robin", "random", "least-request"):
        p = make_policy(name, seed=2).pick(req(), s)
        assert len(p.fallbacks) == 2
        assert len({p.address, *p.fallbacks}) == 3


# ---- the baselines -------------------------------------------------------------------------
def test_round_robin_spreads_exactly_evenly():
    s = store_with(*(PodMetrics(waiting=i * 10) for i in range(4))).snapshot(NOW)
    rr = make_policy("round-robin")
    counts = Counter(idx(rr.pick(req(), s)) for _ in range(400))
    assert counts == {0: 100, 1: 100, 2: 100, 3: 100}


def test_random_is_seeded():
    s = store_with(*(PodMetrics() for _ in range(4))).snapshot(NOW)
    r1, r2 = make_policy("random", seed=7), make_policy("random", seed=7)
    assert [r1.pick(req(), s).address for _ in range(20)] == \
        [r2.pick(req(), s).address for _ in range(20)]


def test_least_request_uses_inflight():
    store = store_with(PodMetrics(), PodMetrics(), PodMetrics())
    for addr, n in (("10.0.0.0:8000", 3), ("10.0.0.1:8000", 1), ("10.0.0.2:8000", 2)):
        for _ in range(n):
            store.acquire(addr)
    assert idx(make_policy("least-request", seed=1).pick(req(), store.snapshot(NOW))) == 1


def test_unknown_policy_lists_names():
    with pytest.raises(ValueError, match="round-robin"):
        make_policy("fastest")


def test_policy_config_validates():
    with pytest.raises(Exception, match="kv_threshold"):
        PolicyConfig(kv_threshold=2)


# ---- prefix saved vs queue cost; LoRA affinity vs queue (the tuned defaults) --------------
def test_net_saved_formula():
    from llmtraffic.balancer.policy.prefix import TOKENS_PER_BLOCK, net_saved
    assert TOKENS_PER_BLOCK == 32  # 128-byte blocks at ~4 bytes per token
    assert net_saved(32, 0, 500, 1088) == pytest.approx(1024 / 1088)
    assert net_saved(32, 2, 100, 1088) == pytest.approx((1024 - 200) / 1088)
    assert net_saved(32, 11, 100, 1088) == 0.0  # the queue ahead costs more than it saves
    assert net_saved(10, 0, 0, 100) == 1.0  # never above 1 when the estimate is short


def _warm(policy: LLMPolicy, store: MetricsStore, prompt: str, n: int) -> int:
    """Send `n` requests sharing `prompt`'s prefix; returns the pod they went to."""
    first = idx(policy.pick(req(prompt=prompt + "q0"), store.snapshot(NOW)))
    for i in range(1, n):
        assert idx(policy.pick(req(prompt=prompt + f"q{i}"), store.snapshot(NOW))) == first
    return first


def test_cached_prefix_outweighs_one_more_queued_request():
    """GIE's min-max queue score gives a pod with one queued request 0 while the others
    get 1: with equal weights that cancelled the whole prefix (shared-prefix hit rate 0.61).
    A long cached prefix now wins unless the queue ahead costs more prefill than it saves."""
    prompt = "a system prompt shared by a group of requests, long enough to matter. " * 60
    store = store_with(PodMetrics(), PodMetrics(), PodMetrics(), PodMetrics())
    policy = LLMPolicy(seed=5)
    home = _warm(policy, store, prompt, 12)
    for k in range(4):
        store.update(f"10.0.0.{k}:8000", PodMetrics(waiting=1 if k == home else 0), NOW)
    pick = policy.pick(req(prompt=prompt + "next"), store.snapshot(NOW))
    assert idx(pick) == home and pick.reason == "llm:prefix"
    for k in range(4):
        store.update(f"10.0.0.{k}:8000", PodMetrics(waiting=40 if k == home else 0), NOW)
    pick = policy.pick(req(prompt=prompt + "later"), store.snapshot(NOW))
    assert idx(pick) != home and pick.reason == "llm:load"


def test_a_pod_seen_only_with_cold_prompts_needs_a_shorter_queue_for_its_prefix():
    """Queued requests cost what their prompts left uncached: on a pod that just got a cold
    long prompt, two queued requests already cost more than the prefix saves."""
    prompt = "another shared system prompt, also long enough to be worth caching. " * 30
    store = store_with(PodMetrics(), PodMetrics())
    policy = LLMPolicy(seed=6)
    home = idx(policy.pick(req(prompt=prompt + "q0"), store.snapshot(NOW)))
    other = 1 - home
    store.update(f"10.0.0.{home}:8000", PodMetrics(waiting=2), NOW)
    store.update(f"10.0.0.{other}:8000", PodMetrics(waiting=0), NOW)
    assert idx(policy.pick(req(prompt=prompt + "q1"), store.snapshot(NOW))) == other


def test_lora_affinity_holds_against_a_short_queue_not_a_long_one():
    running = PodMetrics(running_adapters=("sql-lora", "x"), max_lora=4)
    free = PodMetrics(running_adapters=("x",), max_lora=4)
    policy = LLMPolicy(seed=7)
    s = store_with(PodMetrics(running_adapters=running.running_adapters, max_lora=4,
                              waiting=1),
                   PodMetrics(running_adapters=free.running_adapters, max_lora=4),
                   PodMetrics(running_adapters=free.running_adapters, max_lora=4, waiting=4))
    assert idx(policy.pick(req("sql-lora"), s.snapshot(NOW))) == 0
    # the adapter's running pod holds it against a few more queued (an adapter load costs
    # about as much as 8 queued requests by the default weights), not against a dozen
    s = store_with(PodMetrics(running_adapters=running.running_adapters, max_lora=4,
                              waiting=4),
                   PodMetrics(running_adapters=free.running_adapters, max_lora=4))
    assert idx(policy.pick(req("sql-lora"), s.snapshot(NOW))) == 0
    s = store_with(PodMetrics(running_adapters=running.running_adapters, max_lora=4,
                              waiting=12),
                   PodMetrics(running_adapters=free.running_adapters, max_lora=4))
    assert idx(policy.pick(req("sql-lora"), s.snapshot(NOW))) == 1


# ---- the index counts UTF-8 bytes: a CJK prompt is measured as it is hashed ---------------
def test_cjk_prompt_is_measured_in_the_units_it_is_hashed_in():
    """A CJK character is 3 bytes of UTF-8 and the index hashes 128-byte blocks: the
    prompt's length (`index_tokens`) and what its matched blocks save must be counted alike,
    or a fully cached CJK prompt would save 3x its own length and outweigh any queue."""
    from llmtraffic.balancer.policy.llm import bytes_per_token
    from llmtraffic.balancer.policy.prefix import TOKENS_PER_BLOCK, index_tokens, net_saved

    cjk = "漢字仮名交じり文の例です。" * 40  # 520 characters, 1,560 bytes
    blocks = len(block_hashes("m", cjk))
    assert blocks == 1560 // BLOCK_BYTES == 12
    assert index_tokens(cjk) == 1560 // 4
    assert index_tokens("abcd" * 130) == 130  # ASCII: a byte a character
    # fully cached: saves what it costs, so 2 queued requests of 100 tokens still count
    whole = index_tokens(cjk)
    assert net_saved(blocks, 2, 100, whole) == pytest.approx(
        (blocks * TOKENS_PER_BLOCK - 200) / whole)
    assert net_saved(blocks, 2, 100, whole) < 0.8
    # 520 characters at 0.7 characters a token (the kit tokenizer on CJK) = 742 tokens:
    # 1,560 bytes / 742 = 2.1 bytes a token, so a 128-byte block holds ~61 of its tokens
    req_ = LLMRequest(model="m", target_model="m", adapter=None, prompt=cjk,
                      prompt_tokens=742)
    assert bytes_per_token(req_) == pytest.approx(1560 / 742)
