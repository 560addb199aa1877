"""The engine model against vLLM's documented behaviour: continuous batching limits,
chunked prefill, paged KV with preemption, prefix caching, LoRA slots, step time."""

from __future__ import annotations

import random

import pytest

from llmtraffic.simulator import tokenizer
from llmtraffic.simulator.engine import Engine, EngineConfig, SimRequest
from llmtraffic.simulator.profile import PROFILES, get_profile

PROF = get_profile("llama2-7b-a10")


def make_engine(**kw) -> Engine:
    return Engine(EngineConfig.from_profile(PROF, **kw), PROF, seed=0)


def rand_ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(1 << 30) for _ in range(n)]


def run(engine: Engine, now: float = 0.0, until=None, max_steps: int = 100_000):
    """Step until idle (or until `until(result)` is true); returns (now, results)."""
    results = []
    for _ in range(max_steps):
        if not engine.has_work():
            break
        res = engine.step(now)
        now += res.duration
        results.append(res)
        if until and until(res):
            break
    return now, results


def test_batching_limits_are_respected():
    e = make_engine(max_num_seqs=8, max_num_batched_tokens=512)
    rng = random.Random(1)
    reqs = [SimRequest(str(i), rand_ids(rng, 300), 20, 0.0) for i in range(30)]
    for r in reqs:
        e.add_request(r, 0.0)
    now = 0.0
    while e.has_work():
        res = e.step(now)
        now += res.duration
        assert len(e.running) <= 8
        assert res.num_prefill_tokens + res.num_decode_seqs <= 512
    assert all(r.num_generated == 20 and r.finish_reason == "length" for r in reqs)
    assert all(len(r.token_times) == 20 for r in reqs)


def test_chunked_prefill_splits_a_long_prompt():
    e = make_engine(max_num_batched_tokens=256)
    r = SimRequest("a", rand_ids(random.Random(2), 1000), 4, 0.0)
    e.add_request(r, 0.0)
    _, results = run(e, until=lambda res: bool(res.outputs))
    assert [res.num_prefill_tokens for res in results] == [256, 256, 256, 232]
    assert r.first_token == pytest.approx(sum(res.duration for res in results))


def test_kv_exhaustion_preempts_and_every_request_still_finishes():
    e = make_engine(num_gpu_blocks=64)  # 1,024 tokens of KV
    rng = random.Random(3)
    reqs = [SimRequest(str(i), rand_ids(rng, 200), 150, 0.0) for i in range(8)]
    for r in reqs:
        e.add_request(r, 0.0)
    run(e)
    assert e.preemptions > 0
    assert e.stats().preemptions == e.preemptions
    assert sum(r.preemptions for r in reqs) == e.preemptions
    assert all(r.num_generated == 150 for r in reqs)
    assert e.stats().kv_usage == 0.0


def test_prefix_hits_on_shared_prefix_and_none_on_distinct():
    e = make_engine()
    prefix = "You are a helpful assistant. " * 70  # 2,030 characters
    a = SimRequest("a", tokenizer.encode(prefix + "first question"), 4, 0.0)
    e.add_request(a, 0.0)
    now, _ = run(e)
    b = SimRequest("b", tokenizer.encode(prefix + "second question, longer"), 4, now)
    e.add_request(b, now)
    now, _ = run(e, now)
    full_prefix_blocks = len(tokenizer.encode(prefix)) // 16
    assert b.num_cached_tokens >= full_prefix_blocks * 16
    assert a.num_cached_tokens == 0
    c = SimRequest("c", tokenizer.encode("Totally different text " * 80), 4, now)
    e.add_request(c, now)
    run(e, now)
    assert c.num_cached_tokens == 0
    st = e.stats()
    assert st.prefix_hits == b.num_cached_tokens
    assert st.prefix_queries == a.num_prompt + b.num_prompt + c.num_prompt


def test_prefix_cache_is_per_adapter():
    e = make_engine()
    ids = tokenizer.encode("shared system prompt " * 50)
    e.add_request(SimRequest("a", ids, 2, 0.0, adapter="sql-lora"), 0.0)
    now, _ = run(e)
    b = SimRequest("b", ids, 2, now, adapter="tweet-summary")
    e.add_request(b, now)
    now, _ = run(e, now)
    assert b.num_cached_tokens == 0
    c = SimRequest("c", ids, 2, now, adapter="sql-lora")
    e.add_request(c, now)
    run(e, now)
    assert c.num_cached_tokens > 0


def test_cached_blocks_are_evicted_lru_under_pressure():
    e = make_engine(num_gpu_blocks=40)  # 640 tokens
    rng = random.Random(4)
    first = rand_ids(rng, 320)
    e.add_request(SimRequest("first", first, 1, 0.0), 0.0)
    now, _ = run(e)
    assert e.stats().kv_usage == 0.0  # finished: blocks free but still cached
    again = SimRequest("again", list(first), 1, now)
    e.add_request(again, now)
    now, _ = run(e, now)
    assert again.num_cached_tokens == 304  # 19 full blocks; the last token is recomputed
    # two other prompts that need the whole pool evict it
    for i in range(2):
        e.add_request(SimRequest(f"other{i}", rand_ids(rng, 600), 1, now), now)
        now, _ = run(e, now)
    late = SimRequest("late", list(first), 1, now)
    e.add_request(late, now)
    run(e, now)
    assert late.num_cached_tokens == 0


def test_lora_slot_limit_makes_requests_wait():
    e = make_engine(max_loras=2, max_cpu_loras=4)
    rng = random.Random(5)
    a = SimRequest("a", rand_ids(rng, 50), 30, 0.0, adapter="sql-lora")
    b = SimRequest("b", rand_ids(rng, 50), 30, 0.0, adapter="tweet-summary")
    c = SimRequest("c", rand_ids(rng, 50), 30, 0.0, adapter="sql-lora-1")
    d = SimRequest("d", rand_ids(rng, 50), 30, 0.0)  # base model: no slot needed
    for r in (a, b, c, d):
        e.add_request(r, 0.0)
    e.step(0.0)
    st = e.stats()
    assert st.running_adapters == st.waiting_adapters == ("sql-lora", "tweet-summary")
    assert st.num_waiting_deferred == 1  # sql-lora-1 waits for a slot, listed nowhere
    assert d in e.running and c in e.waiting  # later requests that fit are scheduled
    run(e)
    assert c.num_generated == 30
    assert c.first_scheduled >= min(a.finished_at, b.finished_at)


def test_cold_adapter_load_costs_time():
    rng = random.Random(6)
    ids = rand_ids(rng, 64)
    base = make_engine()
    base.add_request(SimRequest("x", list(ids), 1, 0.0), 0.0)
    lora = make_engine()
    lora.add_request(SimRequest("x", list(ids), 1, 0.0, adapter="sql-lora"), 0.0)
    t_base = base.step(0.0).duration
    t_cold = lora.step(0.0).duration
    assert t_cold >= t_base + PROF.lora_load_cold_s
    lora.add_request(SimRequest("y", list(ids), 1, 1.0, adapter="sql-lora"), 1.0)
    t_loaded = lora.step(1.0).duration
    assert t_loaded < t_cold


def test_step_time_grows_with_load():
    p = PROF
    assert p.step_time(0, 32, 32 * 1000) > p.step_time(0, 1, 100)
    assert p.step_time(0, 8, 8000) > p.step_time(0, 8, 800)
    assert p.step_time(1000, 0, 1000) > p.step_time(100, 0, 100)
    # measured in the engine: a busy batch has longer steps than a single decode
    e1 = make_engine()
    e1.add_request(SimRequest("one", [1] * 100, 50, 0.0), 0.0)
    _, r1 = run(e1)
    e2 = make_engine()
    rng = random.Random(7)
    for i in range(40):
        e2.add_request(SimRequest(str(i), rand_ids(rng, 100), 50, 0.0), 0.0)
    _, r2 = run(e2)
    decode1 = [r.duration for r in r1 if r.num_prefill_tokens == 0]
    decode2 = [r.duration for r in r2 if r.num_prefill_tokens == 0 and r.num_decode_seqs >= 30]
    assert min(decode2) > max(decode1)


def test_abort_frees_blocks():
    e = make_engine()
    rng = random.Random(8)
    r = SimRequest("a", rand_ids(rng, 500), 1000, 0.0)
    e.add_request(r, 0.0)
    for _ in range(5):
        e.step(0.0)
    assert e.stats().kv_usage > 0
    assert e.abort("a", 1.0) is r
    assert r.finish_reason == "abort" and r.finished_at == 1.0
    assert e.stats().kv_usage == 0.0 and not e.has_work()
    assert e.abort("a", 1.0) is None


def test_finish_reasons():
    e = make_engine()
    stop = SimRequest("s", [1, 2, 3], 50, 0.0, output_len=7)
    length = SimRequest("l", [4, 5, 6], 5, 0.0, output_len=99)
    e.add_request(stop, 0.0)
    e.add_request(length, 0.0)
    run(e)
    assert (stop.finish_reason, stop.num_generated) == ("stop", 7)
    assert (length.finish_reason, length.num_generated) == ("length", 5)
    assert e.stats().finished == {"stop": 1, "length": 1}


def test_rejects_prompts_longer_than_max_model_len():
    e = make_engine(max_model_len=128)
    with pytest.raises(ValueError, match="max_model_len"):
        e.add_request(SimRequest("a", [1] * 200, 1, 0.0), 0.0)


def test_deterministic_for_a_seed():
    def trace():
        e = make_engine(num_gpu_blocks=100)
        rng = random.Random(9)
        reqs = [SimRequest(str(i), rand_ids(rng, rng.randrange(20, 400)), rng.randrange(5, 80),
                           0.0, adapter=rng.choice([None, "a", "b", "c", "d", "e"]))
                for i in range(40)]
        for r in reqs:
            e.add_request(r, 0.0)
        run(e)
        return [(r.first_token, r.finished_at, r.preemptions) for r in reqs]

    assert trace() == trace()


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profiles_have_sane_figures(name):
    p = get_profile(name)
    assert 100 < p.num_gpu_blocks() < 100_000
    itl = p.step_time(0, 1, 500)
    assert 0.002 < itl < 0.05  # single-sequence decode step (ITL) in ms range (the tiny CPU
    # model measured 4.9 ms on a quiet host)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        p.num_gpu_blocks(0.1)


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ValueError, match="llama2-7b-a10"):
        get_profile("gpt-9")


def test_predict_ttft_grows_with_queue_and_falls_with_prefix_hits():
    e = make_engine()
    rng = random.Random(10)
    prompt = rand_ids(rng, 800)
    empty = e.predict_ttft(prompt, None, 0.0)
    for i in range(20):
        e.add_request(SimRequest(str(i), rand_ids(rng, 500), 100, 0.0), 0.0)
    busy = e.predict_ttft(prompt, None, 0.0)
    assert busy > 3 * empty
    f = make_engine()
    f.add_request(SimRequest("warm", list(prompt), 1, 0.0), 0.0)
    run(f)
    assert f.predict_ttft(prompt, None, 1.0) < 0.5 * empty


def test_lora_lists_are_what_vllm_0_32_publishes():
    """vLLM 0.32's lora_requests_info: running_ and waiting_lora_adapters are the same list,
    in first-seen order, of adapters whose requests have produced output; a request waiting
    for a LoRA slot is in neither and counts as deferred (tests/fixtures/vllm/busy.txt)."""
    e = make_engine(max_loras=1)
    rng = random.Random(4)
    a = SimRequest("a", rand_ids(rng, 40), 30, 0.0, adapter="sql-lora")
    b = SimRequest("b", rand_ids(rng, 40), 5, 0.0, adapter="tweet-summary")
    for r in (a, b):
        e.add_request(r, 0.0)
    st = e.stats()
    assert (st.running_adapters, st.num_waiting_deferred) == ((), 0)  # nothing ran yet
    now, _ = run(e, until=lambda res: bool(res.outputs))
    st = e.stats()
    assert st.running_adapters == st.waiting_adapters == ("sql-lora",)
    assert (st.num_waiting, st.num_waiting_deferred) == (1, 1)
    run(e, now, until=lambda res: any(o.request is b for o in res.outputs))
    st = e.stats()  # sql-lora finished, its slot went to tweet-summary
    assert st.running_adapters == ("tweet-summary",) and st.num_waiting_deferred == 0
    run(e, now)
    assert e.stats().running_adapters == ()


def test_a_measured_profile_times_steps_with_its_fit():
    from dataclasses import replace

    from llmtraffic.simulator.profile import StepFit

    fit = StepFit(base_s=0.01, prefill_token_s=1e-4, prefill_pair_s=1e-8, decode_seq_s=2e-3,
                  decode_context_s=1e-6, adapter_s=5e-3)
    p = replace(PROF, step_fit=fit, kv_blocks=64, block_size=128)
    assert p.step_time(100, 0, 100) == pytest.approx(0.01 + 1e-2 + 5050 * 1e-8)
    assert p.step_time(0, 4, 400, 1) == pytest.approx(0.01 + 8e-3 + 400e-6 + 5e-3)
    assert p.num_gpu_blocks() == 64
    with pytest.raises(ValueError, match="measured"):
        p.num_gpu_blocks(0.5)
    e = Engine(EngineConfig.from_profile(p), p)
    e.add_request(SimRequest("x", list(range(300)), 2, 0.0), 0.0)
    first = e.step(0.0, slowdown=1.5)  # the whole prompt in one chunk, from scratch
    assert first.duration == pytest.approx(1.5 * p.step_time(300, 0, 300))
