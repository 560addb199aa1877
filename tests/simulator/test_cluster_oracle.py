"""`Engine.predict_ttft` and the oracle: predictions equal what the engine then does, rank
pods correctly in constructed situations (LoRA slots, queues, prefix cache, KV room), and
leave the engine untouched."""

from __future__ import annotations

import random

import pytest

from llmtraffic.balancer.policy.request import LLMRequest, Pick
from llmtraffic.contracts.store import MetricsStore, Pod
from llmtraffic.simulator import tokenizer
from llmtraffic.simulator.cluster import OraclePolicy
from llmtraffic.simulator.engine import Engine, EngineConfig, SimRequest
from llmtraffic.simulator.profile import get_profile

PROF = get_profile("llama2-7b-a10")


def engine(**kw) -> Engine:
    return Engine(EngineConfig.from_profile(PROF, **kw), PROF, seed=0)


def ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(1 << 30) for _ in range(n)]


def advance(e: Engine, now: float, steps: int) -> float:
    for _ in range(steps):
        now += e.step(now).duration
    return now


def actual_ttft(e: Engine, prompt: list[int], adapter: str | None, now: float) -> float:
    r = SimRequest("real", list(prompt), 1, now, adapter)
    e.add_request(r, now)
    t = max(now, e.busy_until)
    while r.first_token is None:
        t += e.step(t).duration
    return r.first_token - now


def with_adapters(adapters: list[str], outputs: list[int], **kw) -> Engine:
    """An engine running one request per adapter, each with `outputs[i]` tokens to go."""
    e = engine(**kw)
    rng = random.Random(len(adapters))
    for i, (a, n) in enumerate(zip(adapters, outputs)):
        e.add_request(SimRequest(f"r{i}", ids(rng, 64), n, 0.0, a), 0.0)
    advance(e, 0.0, 2)
    return e


def test_prediction_equals_what_the_engine_then_does():
    rng = random.Random(1)
    e = engine(max_loras=2)
    for i in range(40):  # more than the KV cache holds: queueing and preemption
        e.add_request(SimRequest(str(i), ids(rng, 300), 200, 0.0,
                                 ("a", "b", "c", None)[i % 4], output_len=50 + i * 5), 0.0)
    now = advance(e, 0.0, 30) - 0.01  # mid-step: the next step starts at busy_until
    prompt = ids(rng, 700)
    for adapter in (None, "a", "d"):
        predicted = e.predict_ttft(prompt, adapter, now)
        twin = e._fork()
        assert predicted == pytest.approx(actual_ttft(twin, prompt, adapter, now))
    assert e.predict_ttft(prompt, "d", now) > e.predict_ttft(prompt, None, now)


def test_prediction_leaves_the_engine_untouched():
    rng = random.Random(2)
    a, b = engine(), engine()
    for e in (a, b):
        r2 = random.Random(3)
        for i in range(30):
            e.add_request(SimRequest(str(i), ids(r2, 400), 100, 0.0), 0.0)
        advance(e, 0.0, 5)
    for _ in range(5):
        a.predict_ttft(ids(rng, 500), "x", 1.0)
    assert a.stats() == b.stats()
    assert [(r.request_id, r.num_computed, list(r.blocks)) for r in a.running] == \
        [(r.request_id, r.num_computed, list(r.blocks)) for r in b.running]
    assert advance(a, 1.0, 50) == advance(b, 1.0, 50)


def test_adapter_loaded_beats_full_slots_and_a_free_slot_beats_full_slots():
    # both pods' two slots are busy for 300 more tokens; only `warm` runs "x"
    full = with_adapters(["a", "b"], [300, 300], max_loras=2)
    warm = with_adapters(["x", "b"], [300, 300], max_loras=2)
    free = with_adapters(["b"], [300], max_loras=2)
    prompt = ids(random.Random(4), 200)
    t_full = full.predict_ttft(prompt, "x", 1.0)
    t_warm = warm.predict_ttft(prompt, "x", 1.0)
    t_free = free.predict_ttft(prompt, "x", 1.0)
    assert t_warm < t_full and t_free < t_full
    assert t_full > 250 * 0.02  # waits for a whole adapter to drain, not for one token
    # a slot frees when the *last* request of an adapter is done, not the first
    skewed = with_adapters(["a", "a", "b"], [20, 400, 400], max_loras=2)
    assert skewed.predict_ttft(prompt, "x", 1.0) > 300 * 0.02


def test_waiting_lora_requests_ahead_take_the_free_slot():
    """A free slot is no help when requests of another adapter already wait for it."""
    rng = random.Random(5)
    e = with_adapters(["a"], [400], max_loras=2)
    crowded = with_adapters(["a"], [400], max_loras=2)
    for i in range(3):
        crowded.add_request(SimRequest(f"w{i}", ids(rng, 64), 400, 0.0, "y"), 0.0)
    crowded.add_request(SimRequest("w-z", ids(rng, 64), 400, 0.0, "z"), 0.0)
    advance(crowded, 1.0, 1)  # "y" took the free slot; "z" waits for one
    prompt = ids(rng, 100)
    assert crowded.predict_ttft(prompt, "x", 2.0) > 10 * e.predict_ttft(prompt, "x", 2.0)


def test_long_queue_is_slower_than_short_queue():
    rng = random.Random(6)
    short, long_ = engine(), engine()
    for i in range(2):
        short.add_request(SimRequest(f"s{i}", ids(rng, 500), 50, 0.0), 0.0)
    for i in range(30):
        long_.add_request(SimRequest(f"l{i}", ids(rng, 500), 50, 0.0), 0.0)
    prompt = ids(rng, 300)
    assert long_.predict_ttft(prompt, None, 0.0) > 3 * short.predict_ttft(prompt, None, 0.0)


def test_cached_prefix_is_faster_than_cold_and_kv_room_matters():
    rng = random.Random(7)
    system = ids(rng, 1024)
    cached, cold = engine(), engine()
    cached.add_request(SimRequest("warm", system + ids(rng, 64), 1, 0.0), 0.0)
    cold.add_request(SimRequest("other", ids(rng, 1088), 1, 0.0), 0.0)
    advance(cached, 0.0, 1)
    advance(cold, 0.0, 1)
    prompt = system + ids(rng, 64)
    assert cached.predict_ttft(prompt, None, 1.0) < 0.5 * cold.predict_ttft(prompt, None, 1.0)
    # a pod whose KV cache is full of long-running requests must first free room
    full = engine()
    for i in range(17):
        full.add_request(SimRequest(f"f{i}", ids(rng, 500), 1000, 0.0), 0.0)
    advance(full, 0.0, 8)
    assert full.pool.num_free() < 64
    assert full.predict_ttft(prompt, None, 1.0) > 5 * cold.predict_ttft(prompt, None, 1.0)


def test_limit_stops_early_with_a_lower_bound():
    rng = random.Random(8)
    e = engine()
    for i in range(30):
        e.add_request(SimRequest(str(i), ids(rng, 500), 50, 0.0), 0.0)
    prompt = ids(rng, 300)
    full = e.predict_ttft(prompt, None, 0.0)
    cut = e.predict_ttft(prompt, None, 0.0, limit=full / 4)
    assert full / 4 <= cut < full


def _snapshot(addresses: list[str], now: float):
    store = MetricsStore()
    store.set_pods([Pod(f"p{i}", a, {}, "pool") for i, a in enumerate(addresses)])
    return store.snapshot(now)


def test_oracle_picks_the_pod_with_least_ttft_deterministically():
    rng = random.Random(9)
    engines = {"10.0.0.1:8000": with_adapters(["a", "b"], [300, 300], max_loras=2),
               "10.0.0.2:8000": with_adapters(["x", "b"], [300, 300], max_loras=2),
               "10.0.0.3:8000": engine(max_loras=2)}
    for i in range(30):  # the idle-looking third pod has a long queue
        engines["10.0.0.3:8000"].add_request(SimRequest(str(i), ids(rng, 500), 50, 0.0), 0.0)
    prompt = "hello world " * 60
    req = LLMRequest("x", "x", "x", prompt, 150)
    snap = _snapshot(list(engines), 1.0)
    oracle = OraclePolicy(engines)
    pick = oracle.pick(req, snap)
    assert isinstance(pick, Pick) and pick.address == "10.0.0.2:8000"
    token_ids = tokenizer.encode(prompt)
    best = min(engines, key=lambda a: (engines[a].predict_ttft(token_ids, "x", 1.0), a))
    assert best == pick.address
    assert all(oracle.pick(req, snap).address == pick.address for _ in range(3))


def test_oracle_does_not_overtake_requests_starving_for_a_lora_slot():
    """Pod 1 is a little faster for an "a" request, but there it would be admitted ahead of
    a "b" request waiting for the only slot and keep "a" busy for 300 more tokens: the
    oracle counts that delay and sends it to pod 2."""
    rng = random.Random(11)
    starving = engine(max_loras=1)
    starving.add_request(SimRequest("a0", ids(rng, 64), 40, 0.0, "a"), 0.0)
    starving.add_request(SimRequest("b0", ids(rng, 64), 40, 0.0, "b"), 0.0)
    busier = engine(max_loras=1)
    busier.add_request(SimRequest("a1", ids(rng, 64), 40, 0.0, "a"), 0.0)
    advance(starving, 0.0, 2)
    advance(busier, 0.0, 2)
    busier.add_request(SimRequest("base", ids(rng, 1500), 40, 0.1), 0.1)
    engines = {"10.0.0.1:8000": starving, "10.0.0.2:8000": busier}
    prompt = "hello world " * 60
    token_ids = tokenizer.encode(prompt)
    assert starving.predict_ttft(token_ids, "a", 0.1) < busier.predict_ttft(token_ids, "a", 0.1)
    req = LLMRequest("a", "a", "a", prompt, 150)
    snap = _snapshot(list(engines), 0.1)
    greedy = OraclePolicy(engines, starvation_aware=False)
    greedy.output_len = 300
    assert greedy.pick(req, snap).address == "10.0.0.1:8000"
    aware = OraclePolicy(engines)
    aware.output_len = 300
    assert aware.pick(req, snap).address == "10.0.0.2:8000"
    aware.output_len = 1  # a one-token answer barely holds the slot: the faster pod wins
    assert aware.pick(req, snap).address == "10.0.0.1:8000"


def test_oracle_prefers_a_pod_running_the_adapter_within_the_tolerance():
    rng = random.Random(12)
    other = engine(max_loras=2)  # idle: "a" would take a free slot
    running = engine(max_loras=2)  # runs "a" plus a little more prefill work ahead
    running.add_request(SimRequest("a0", ids(rng, 64), 400, 0.0, "a"), 0.0)
    advance(running, 0.0, 2)
    running.add_request(SimRequest("base", ids(rng, 300), 40, 0.1), 0.1)
    engines = {"10.0.0.1:8000": other, "10.0.0.2:8000": running}
    prompt = "hello world " * 60
    token_ids = tokenizer.encode(prompt)
    t_other = other.predict_ttft(token_ids, "a", 0.1)
    t_running = running.predict_ttft(token_ids, "a", 0.1)
    assert t_other < t_running < t_other + 0.3
    req = LLMRequest("a", "a", "a", prompt, 150)
    snap = _snapshot(list(engines), 0.1)
    assert OraclePolicy(engines).pick(req, snap).address == "10.0.0.2:8000"
    assert OraclePolicy(engines, affinity_tolerance=0.0).pick(req, snap).address == \
        "10.0.0.1:8000"
    base = LLMRequest("m", "m", None, prompt, 150)  # no adapter: the least TTFT wins
    assert OraclePolicy(engines).pick(base, snap).address == "10.0.0.1:8000"
