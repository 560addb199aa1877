"""`bench fidelity`: the side-by-side table (sim/real per figure, the policies' order on
both, at most 100 columns), the pieces it is made of, and the command on simulated pods."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import pytest

from llmtraffic.cli import main
from llmtraffic.harness import fidelity as fid
from llmtraffic.simulator.profile import StepFit, get_profile
from llmtraffic.simulator.workloads import make_workload

FIGS = {"ttft_p50_s": 0.4, "ttft_p90_s": 1.2, "throughput_tok_s": 40.0,
        "prefix_hit_rate": 0.5, "preemptions": 0}


def samples(n: int = 200, slower: float = 1.0, seed: int = 1) -> list[fid.Sample]:
    """n requests: TTFT spread 0.1-1 s (times `slower`), 400 prompt tokens, 200 cached."""
    rng = random.Random(seed)
    return [(i, rng.uniform(0.1, 1.0) * slower, 400, 200) for i in range(n)]


def run_with(real_rr: dict, sim_rr: dict) -> fid.Fidelity:
    f = fid.Fidelity("cpu-mix", 2, 0.9, 120.0, 1, "vllm-cpu-tiny", "vllm")
    f.real = {"llm": {**FIGS, "requests": samples()},
              "round-robin": {**FIGS, **real_rr, "requests": samples(slower=2.0)}}
    f.sim = {"llm": {**FIGS, "requests": samples()},
             "round-robin": {**FIGS, **sim_rr, "requests": samples(slower=0.5)}}
    f.sim_scaled = f.sim
    f.speeds = [1.1, 1.3]
    f.steps = [{"step": "A10 model, seed-lora, 4 pods, load 0.9 (README) and then some more",
                "rr_over_llm_p50": 17.7, "rr_over_llm_p90": 25.0, "llm_ttft_p90_s": 1.66}]
    return f


def test_the_table_fits_100_columns_and_marks_what_is_off():
    text = fid.format_fidelity(run_with({"ttft_p50_s": 0.8}, {"ttft_p50_s": 0.5}))
    assert max(map(len, text.splitlines())) <= 100
    rr_p50 = next(ln for ln in text.splitlines()
                  if ln.startswith("TTFT p50") and "round-robin" in ln)
    assert "0.62*" in rr_p50  # 0.5 / 0.8, more than 25% off
    order = next(ln for ln in text.splitlines()
                 if ln.startswith("TTFT p50") and ln.rstrip().endswith("differs/differs"))
    assert order.split()[3] == "2.00" and order.split()[5] == "0.50"  # round-robin / llm
    hits = next(ln for ln in text.splitlines()
                if ln.startswith("prefix hit rate") and "within noise" in ln)
    assert hits.split()[3:5] == ["1.00", "1.00-1.00"]
    assert "llm 1.10x, round-robin 1.30x" in text  # each run's engines against the profile
    assert "25.0x" in text


def test_order_ties_within_two_percent_and_higher_is_better_for_hits():
    a, b = {"prefix_hit_rate": 0.50}, {"prefix_hit_rate": 0.45}
    assert fid.better(a, b, "prefix_hit_rate") == "a"
    assert fid.better({"ttft_p50_s": 1.0}, {"ttft_p50_s": 1.01}, "ttft_p50_s") == "="
    assert fid.better({"ttft_p50_s": 1.0}, {"ttft_p50_s": 2.0}, "ttft_p50_s") == "a"


def test_a_difference_beyond_the_requests_noise_is_resolved_and_a_small_one_is_not():
    a = samples()
    worse = fid.spread(a, samples(slower=1.3), "ttft_p50_s")
    assert worse.ratio == pytest.approx(1.3) and worse.low > 1.0
    assert worse.verdict("ttft_p50_s") == "a"  # lower TTFT is better: a
    noisy = fid.spread(a, samples(seed=2), "ttft_p90_s")  # the same distribution
    assert noisy.low < 1.0 < noisy.high and noisy.verdict("ttft_p90_s") == "="
    more_hits = fid.spread(a, [(i, t, p, c + 100) for i, t, p, c in a], "prefix_hit_rate")
    assert more_hits.ratio == pytest.approx(1.5) and more_hits.verdict("prefix_hit_rate") == "b"
    assert fid.spread(a, [], "ttft_p50_s").ratio != fid.spread(a, [], "ttft_p50_s").ratio


def test_the_order_rule():
    a_better = fid.Spread(1.3, 1.2, 1.4)  # b's TTFT 20-40% higher
    b_better, tie = fid.Spread(0.8, 0.7, 0.9), fid.Spread(1.05, 0.95, 1.15)
    key = "ttft_p50_s"
    assert fid.order(a_better, fid.Spread(1.1, 1.05, 1.2), key) == "same"
    assert fid.order(a_better, b_better, key) == "differs"
    assert fid.order(tie, fid.Spread(1.02, 0.99, 1.06), key) == "tie within noise"
    # one resolves a policy inside the other's interval: the data cannot tell them apart
    assert fid.order(tie, fid.Spread(1.1, 1.05, 1.15), key) == "tie within noise"
    assert fid.order(tie, a_better, key) == "differs"  # 1.3 is outside 0.95-1.15
    assert fid.order(a_better, tie, key) == "differs"


def test_a_slower_host_scales_every_measured_time():
    p = replace(get_profile("llama2-7b-a10"), step_fit=StepFit(0.01, 1e-4, 1e-9, 1e-3, 1e-6,
                                                                  2e-3, 3e-4),
                frontend_s=0.02)
    s = fid.slower(p, 2.0)
    assert s.step_fit.base_s == pytest.approx(0.02) and s.frontend_s == pytest.approx(0.04)
    assert s.step_time(100, 2, 300, 1) == pytest.approx(2 * p.step_time(100, 2, 300, 1))
    assert fid.slower(p, math.nan) is p


def test_the_engines_speed_is_found_from_the_real_runs_decode_steps():
    cpu = replace(get_profile("llama2-7b-a10"), name="cpu-like",
                  step_fit=StepFit(0.005, 4e-4, 1e-8, 9e-4, 1e-6, 3e-3, 3e-4, 3e-4),
                  kv_blocks=512, block_size=128, max_num_seqs=16, chars_per_token=2.0,
                  host_contention=0.25, frontend_s=0.008, frontend_busy_s=0.012)
    reqs = make_workload("cpu-mix", 2.0, 30.0, 1)
    # a "real" run: the same engine on a host 1.5x as slow
    real = fid.run_sim(fid.slower(cpu, 1.5), reqs, 2, 30.0, 1, ["llm"])["llm"]
    assert real["tpot_p50_s"] > 0
    speed = fid.engine_speed(cpu, real, reqs, 2, 30.0, 1, "llm")
    assert speed == pytest.approx(1.5, rel=0.03)
    assert math.isnan(fid.engine_speed(cpu, {"ttft_p50_s": 1.0}, reqs, 2, 30.0, 1, "llm"))


def test_salting_keeps_shared_prefixes_shared_and_runs_apart():
    reqs = make_workload("cpu-mix", 2.0, 10.0, 1)
    a, b = fid.salted(reqs, "[00000001] "), fid.salted(reqs, "[00000002] ")
    groups = [r.group for r in a]
    same_app = [r for r in a if r.group == max(groups, key=groups.count)]
    assert len(same_app) > 1 and same_app[1].prompt[:600] == same_app[0].prompt[:600]
    assert a[0].prompt[:12] != b[0].prompt[:12] and len(a[0].prompt) == len(b[0].prompt)


def test_the_ladder_runs_in_virtual_time():
    cpu = replace(get_profile("llama2-7b-a10"), name="cpu-like",
                  step_fit=StepFit(0.012, 5e-4, 1e-9, 2e-3, 1e-6, 5e-3, 5e-4), kv_blocks=512,
                  block_size=128, max_num_seqs=16, chars_per_token=2.0, host_contention=0.2,
                  frontend_s=0.02)
    steps = [replace(s, duration=30.0, pods=2) for s in fid.ladder(cpu, "cpu-mix", 2, 0.3,
                                                                     30.0)]
    assert len(steps) == 6 and steps[-1].profile is cpu
    rows = fid.explain(steps[1:3], seed=1)
    assert [r["step"] for r in rows] == [s.label for s in steps[1:3]]
    assert all(r["rr_over_llm_p90"] > 0 and r["rate_rps"] > 0 for r in rows)


def test_fidelity_on_simulated_pods(tmp_path, capsys):
    out = tmp_path / "fidelity.json"
    assert main(["bench", "fidelity", "--engine", "sim", "--profile", "llama2-7b-a10",
                 "--workload", "cpu-mix", "--rate", "0.5", "--duration", "6",
                 "--no-explain", "--json", str(out), "--workdir", str(tmp_path / "w")]) == 0
    data = json.loads(out.read_text())
    for side in ("real", "sim"):
        assert set(data[side]) == {"llm", "round-robin"}
        for figures in data[side].values():
            assert figures["completed"] > 0 and figures["throughput_tok_s"] > 0
    assert "which policy is better" in capsys.readouterr().out
    for side in ("real", "sim"):  # each request, for the spread of the policies' order
        reqs = data[side]["llm"]["requests"]
        assert len(reqs) == data[side]["llm"]["completed"]
        assert all(ttft > 0 and prompt >= cached >= 0 for _, ttft, prompt, cached in reqs)


def test_the_engines_are_warmed_by_the_loads_first_seconds_before_the_first_policy(
        tmp_path, monkeypatch):
    """Whichever policy ran first on fresh real engines had the worse TTFT p90: each run
    must find the engines already past their first batches of the load's shapes."""
    reqs = make_workload("cpu-mix", 2.0, 60, 1)
    calls = []

    def fake_router(spec, workdir, run_reqs, pods, scale, seed, fleet, keep=None):
        calls.append((spec.policy, workdir, list(run_reqs), keep is not None))
        return {}, 0.0

    class Probe:
        stretch = 1.0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(fid, "run_router", fake_router)
    monkeypatch.setattr(fid, "warm_up", lambda urls: None)
    monkeypatch.setattr(fid, "HostLoad", Probe)
    fleet = type("F", (), {"urls": ("http://a", "http://b")})()
    out, _ = fid.run_real(fleet, reqs, tmp_path, 1, get_profile("vllm-cpu-tiny"),
                          say=lambda _: None)
    assert [c[0] for c in calls] == ["round-robin", *fid.POLICIES]
    policy, workdir, warm, measured = calls[0]
    assert workdir == tmp_path / "warm-up" and not measured
    assert warm and len(warm) < len(reqs)
    assert all(w.arrival < fid.WARM_LOAD_S for w in warm)
    assert [w.index for w in warm] == [w.index for w in fid.warm_load(reqs)]
    # salted apart from every measured run, so it leaves none of their prefixes cached
    later = {c[2][0].prompt.split("] ")[0] for c in calls[1:]}
    assert warm[0].prompt.split("] ")[0] not in later and len(later) == 2
    assert set(out) == set(fid.POLICIES) and all(c[3] for c in calls[1:])
