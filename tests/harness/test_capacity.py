"""Fleet capacity is measured once per (profile, workload, pods), stored in capacity.json,
and the same stored figure sets the offered rate of every seed."""

from __future__ import annotations

import json

import pytest

from llmtraffic.harness import capacity
from llmtraffic.harness.capacity import (CAPACITY_FILE, CALIBRATION_SEED, completion_rate,
                                         fleet_capacity, stored_capacity)
from llmtraffic.harness.routing import run_routing


def test_the_committed_file_holds_the_grid_and_says_how_it_was_made():
    data = json.loads(CAPACITY_FILE.read_text())
    assert data["command"].startswith("llmtraffic bench capacity")
    assert data["calibration_seed"] == CALIBRATION_SEED
    assert not 1 <= CALIBRATION_SEED <= 16 and CALIBRATION_SEED not in (201, 202, 203)
    table = data["capacity_rps"]["llama2-7b-a10"]
    for w in ("seed-lora", "shared-prefix", "mixed", "multi-turn"):
        for n in (2, 4, 8, 16):
            assert table[w][str(n)] > 0
        assert table[w]["16"] > 6 * table[w]["2"]  # about linear in pods


def test_every_seed_runs_at_the_stored_capacity(monkeypatch):
    monkeypatch.setattr(capacity, "measure_fleet_capacity",
                        lambda *a, **k: pytest.fail("measured instead of read"))
    stored = json.loads(CAPACITY_FILE.read_text())["capacity_rps"]["llama2-7b-a10"]
    runs = [run_routing("seed-lora", pods=2, load=0.5, policies=["round-robin"], duration=5,
                        seed=s) for s in (201, 7)]
    for run in runs:
        assert run.capacity_rps == stored["seed-lora"]["2"]
        assert run.rate_rps == 0.5 * stored["seed-lora"]["2"]
        assert "capacity.json, calibration seed 1000" in run.capacity_source


def test_a_fleet_not_stored_is_measured_with_a_warning(tmp_path, caplog, monkeypatch):
    path = tmp_path / "capacity.json"
    path.write_text(json.dumps({"calibration_seed": 1000, "capacity_rps": {
        "llama2-7b-a10": {"seed-lora": {"2": 3.5}}}}))
    assert stored_capacity("seed-lora", 2, path=path).rps == 3.5
    assert stored_capacity("seed-lora", 3, path=path) is None
    monkeypatch.setattr(capacity, "measure_fleet_capacity", lambda *a, **k: 4.25)
    cap = fleet_capacity("seed-lora", 3, path=path)
    assert cap.rps == 4.25 and "measured now" in cap.source
    assert "llmtraffic bench capacity --profile llama2-7b-a10 --workload seed-lora --pods 3" \
        in caplog.text


def test_a_broken_file_names_the_command_that_regenerates_it(tmp_path):
    path = tmp_path / "capacity.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="llmtraffic bench capacity"):
        stored_capacity("seed-lora", 2, path=path)


def test_completion_rate_leaves_out_ramp_and_drain():
    times = [0.0] * 10 + [float(k) for k in range(1, 81)] + [500.0] * 10
    assert completion_rate(times) == pytest.approx(80 / 79, rel=0.05)
