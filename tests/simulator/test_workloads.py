"""Workloads are deterministic for a seed and have the documented shape."""

import statistics

import pytest

from llmtraffic.simulator.workloads import (BASE_MODEL, SEED_ADAPTERS, TEXT_CHARS_PER_TOKEN,
                                            make_workload, shared_prefix)


def test_same_seed_same_requests_other_seed_differs():
    a = make_workload("seed-lora", 5, 60, seed=3)
    b = make_workload("seed-lora", 5, 60, seed=3)
    c = make_workload("seed-lora", 5, 60, seed=4)
    assert a == b
    assert a != c


@pytest.mark.parametrize("name", ["seed-lora", "shared-prefix", "mixed", "multi-turn", "cpu-mix"])
def test_poisson_rate_and_ordering(name):
    reqs = make_workload(name, 20, 300, seed=1)
    assert 0.9 * 6000 < len(reqs) < 1.1 * 6000
    arrivals = [r.arrival for r in reqs]
    assert arrivals == sorted(arrivals)
    assert [r.index for r in reqs] == list(range(len(reqs)))
    assert all(1 <= r.output_len <= r.max_tokens for r in reqs)


def test_seed_lora_zipf_popularity_and_base_share():
    reqs = make_workload("seed-lora", 50, 200, seed=2)
    counts = {m: sum(r.model == m for r in reqs) for m in (BASE_MODEL, *SEED_ADAPTERS)}
    assert 0.25 < counts[BASE_MODEL] / len(reqs) < 0.35
    assert counts[SEED_ADAPTERS[0]] > counts[SEED_ADAPTERS[4]] > counts[SEED_ADAPTERS[9]]
    # ShareGPT means (161 prompt, 338 output tokens), clipped tails pull them down a little
    assert 120 < statistics.mean(len(r.prompt) / TEXT_CHARS_PER_TOKEN for r in reqs) < 190
    assert 250 < statistics.mean(r.output_len for r in reqs) < 360


def test_shared_prefix_groups_share_exact_prefixes():
    reqs = shared_prefix(10, 100, seed=1, groups=4, system_prompt_tokens=256)
    by_group: dict[str, list[str]] = {}
    for r in reqs:
        by_group.setdefault(r.group, []).append(r.prompt)
    assert len(by_group) == 4
    for prompts in by_group.values():
        common = prompts[0][:256 * TEXT_CHARS_PER_TOKEN]
        assert all(p.startswith(common) for p in prompts)
        assert len(set(prompts)) == len(prompts)  # the questions differ
    firsts = {p[0][:200] for p in by_group.values()}
    assert len(firsts) == 4  # groups differ from their first characters on


def test_unknown_workload_is_a_clear_error():
    with pytest.raises(ValueError, match="seed-lora"):
        make_workload("nope", 1, 1)


def test_cpu_mix_apps_keep_their_prompt_and_model_and_fit_the_cpu_engine():
    """Each app's requests share its system prompt (several 128-token blocks at the kit
    tokenizer's ~2 characters per token) and its model; prompt plus output fits 2,048."""
    reqs = make_workload("cpu-mix", 3.0, 60.0, 2)
    by_app: dict[str, list] = {}
    for r in reqs:
        by_app.setdefault(r.group, []).append(r)
    assert len(by_app) >= 6
    for app in by_app.values():
        assert len({r.model for r in app}) == 1
        assert len({r.prompt[:640] for r in app}) == 1
    assert all(len(r.prompt) / 2 + r.max_tokens < 2048 for r in reqs)
    assert sum(r.model != BASE_MODEL for r in reqs) > len(reqs) / 2  # mostly adapters


def test_multi_turn_is_deterministic_and_resends_the_conversation():
    a = make_workload("multi-turn", 10, 200, seed=5)
    assert a == make_workload("multi-turn", 10, 200, seed=5)
    assert a != make_workload("multi-turn", 10, 200, seed=6)
    chats: dict[str, list] = {}
    for r in a:
        chats.setdefault(r.group, []).append(r)
    multi = [c for c in chats.values() if len(c) >= 3]
    assert len(multi) > 10
    for turns in multi:
        for prev, nxt in zip(turns, turns[1:]):
            assert nxt.arrival - prev.arrival >= 10.0  # after the answer and a think time
            # the next turn resends this turn's prompt and an answer of its output length
            assert nxt.prompt.startswith(prev.prompt)
            answer = nxt.prompt[len(prev.prompt):].split("\nUser: ")[0]
            assert len(answer) == prev.output_len * TEXT_CHARS_PER_TOKEN
        assert len(turns[-1].prompt) / TEXT_CHARS_PER_TOKEN + turns[-1].max_tokens <= 3072
    assert all(r.model == BASE_MODEL for r in a)


def test_multi_turn_averages_its_rate_with_a_burst_at_40_to_50_percent():
    reqs = [r for seed in (1, 2, 3) for r in make_workload("multi-turn", 20, 300, seed=seed)]
    assert 0.9 * 18000 < len(reqs) < 1.1 * 18000
    burst = sum(1 for r in reqs if 120 <= r.arrival < 150) / 30
    calm = sum(1 for r in reqs if r.arrival < 100) / 100
    assert burst > 1.3 * calm
    turns: dict[str, int] = {}
    for r in make_workload("multi-turn", 20, 300, seed=1):
        turns[r.group] = turns.get(r.group, 0) + 1
    assert 2 < statistics.mean(turns.values()) < 4.5 and max(turns.values()) <= 8
