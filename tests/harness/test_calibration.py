"""`bench calibrate`: the step-time fit recovers a known model, and the command run against
simulated pods writes a profile the simulator loads, with its provenance inside."""

from __future__ import annotations

import json
import random

import pytest

from llmtraffic.cli import main
from llmtraffic.harness.calibration import Observation, fit_steps, medians
from llmtraffic.simulator.profile import StepFit, profile_from_json

TRUE = StepFit(base_s=0.012, prefill_token_s=4e-4, prefill_pair_s=2e-8, decode_seq_s=3e-3,
               decode_context_s=1e-6, adapter_s=0.02, adapter_token_s=4e-4,
               lora_batch_token_s=3e-4)


def observed(rng: random.Random, noise: float) -> list[Observation]:
    obs = []
    for p in (32, 128, 256, 512, 1024, 1536):
        obs.append(Observation(f"prefill {p}", 0.0, prefill_tokens=p,
                               prefill_pairs=p * (p + 1) // 2))
    for p in (128, 512):
        obs.append(Observation(f"prefill {p} lora", 0.0, prefill_tokens=p,
                               prefill_pairs=p * (p + 1) // 2, adapters=1, adapter_tokens=p))
    for b, ctx, k in ((1, 80, 0), (4, 80, 0), (16, 80, 0), (1, 1072, 0), (4, 1072, 0),
                      (4, 80, 1), (4, 80, 2)):
        obs.append(Observation(f"decode x{b} @{ctx} {k}", 0.0, decode_seqs=b,
                               decode_context=b * ctx, adapters=k,
                               adapter_tokens=b if k else 0))
    for p in (128, 512):  # a base prefill beside one decoding request, then an adapter's
        for lora in (False, True):
            obs.append(Observation(f"prefill {p} beside {lora}", 0.0, prefill_tokens=p,
                                   prefill_pairs=p * (p + 1) // 2, decode_seqs=1,
                                   decode_context=80, adapters=int(lora),
                                   adapter_tokens=int(lora), lora_batch_tokens=p * lora))
    for o in obs:
        exact = TRUE.seconds(o.prefill_tokens, o.prefill_pairs, o.decode_seqs,
                             o.decode_context, o.adapters, o.adapter_tokens,
                             o.lora_batch_tokens)
        o.seconds = exact * (1 + rng.uniform(-noise, noise))
    return obs


def test_the_fit_recovers_a_known_step_model():
    fit = fit_steps(observed(random.Random(1), noise=0.0))
    for name in TRUE.__dataclass_fields__:
        assert getattr(fit, name) == pytest.approx(getattr(TRUE, name), rel=1e-6), name


def test_with_noise_every_coefficient_stays_non_negative_and_close():
    obs = observed(random.Random(2), noise=0.1)
    fit = fit_steps(obs)
    assert all(getattr(fit, n) >= 0 for n in TRUE.__dataclass_fields__)
    assert all(abs(o.fitted / o.seconds - 1) < 0.25 for o in obs)
    assert fit.decode_seq_s == pytest.approx(TRUE.decode_seq_s, rel=0.3)


def test_rounds_are_folded_to_their_median():
    a = [Observation("x", s, decode_seqs=1) for s in (0.3, 0.1, 0.2)]
    one, = medians(a + [Observation("y", 1.0, decode_seqs=2)])[:1]
    assert one.what == "x" and one.seconds == 0.2


def test_calibrate_simulated_pods_writes_a_profile_the_simulator_loads(tmp_path, capsys):
    out = tmp_path / "measured.json"
    assert main(["bench", "calibrate", "--engine", "sim", "--profile", "llama2-7b-a10",
                 "--quick", "--name", "measured-a10", "--out", str(out),
                 "--workdir", str(tmp_path / "work")]) == 0
    data = json.loads(out.read_text())
    p = profile_from_json(data, out.name)
    assert p.name == "measured-a10" and p.step_fit is not None
    assert (p.kv_blocks, p.block_size, p.chars_per_token) == (560, 16, 2.0)  # from the page
    cal = p.calibration
    assert cal["command"] == "llmtraffic bench calibrate --engine sim --quick"
    assert cal["date"] and cal["steps"] and cal["observations"] and cal["contention"]
    assert all(s["fitted"] > 0 for s in cal["steps"])
    assert "wrote" in capsys.readouterr().out


def test_the_committed_cpu_profile_carries_its_measurements():
    """simulator/profiles/vllm-cpu-tiny.json was written by `bench calibrate` on the real
    CPU fleet: its constants are the fit of the medians it keeps, not typed by hand."""
    from llmtraffic.simulator.profile import get_profile

    p = get_profile("vllm-cpu-tiny")
    cal = p.calibration
    assert cal["command"].startswith("llmtraffic bench calibrate --engine vllm")
    assert cal["engine"].startswith("vllm 0.32") and cal["date"]
    assert (p.block_size, p.kv_blocks) == (128, 512)  # what the real page says on CPU
    steps = [Observation(**s) for s in cal["steps"]]
    assert len(cal["observations"]) >= len(steps) > len(TRUE.__dataclass_fields__)
    refit = fit_steps([Observation(**{**s, "fitted": None}) for s in cal["steps"]])
    assert refit == pytest.approx(p.step_fit)
    # measured beside a decoding adapter request, a base token pays for the adapter too
    assert any("beside a decoding adapter" in o.what for o in steps)
    assert p.step_fit.lora_batch_token_s > 0.5 * p.step_fit.adapter_token_s
    assert p.frontend_busy_s is not None and p.frontend_busy_s > 0
    assert [o.fitted for o in steps] == pytest.approx([
        p.step_fit.seconds(o.prefill_tokens, o.prefill_pairs, o.decode_seqs,
                           o.decode_context, o.adapters, o.adapter_tokens,
                           o.lora_batch_tokens) for o in steps])
