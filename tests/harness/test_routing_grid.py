"""`bench routing --grid`: the table (ratios on every seed, sheds of each policy, the goals a
cell misses), the reporting seeds kept apart from the tuning seeds, and the cell arithmetic
on hand-built results (failures as inf)."""

from __future__ import annotations

import math

import pytest

from llmtraffic.cli import main
from llmtraffic.harness import grid
from llmtraffic.harness.grid import ORACLE, cell_figures, run_grid


def test_quick_grid_prints_one_table_per_workload_with_sheds(capsys):
    assert main(["bench", "routing", "--grid", "--quick", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "tuning seeds 1-16, reporting seeds 201" in out
    assert "greedy per-request heuristic" in out
    for w in grid.WORKLOADS:
        assert f"\n{w}: capacity req/s 2 pods " in out
    assert out.count("fail rr/lr/llm/go") == len(grid.WORKLOADS)
    rows = [line for line in out.splitlines() if line.startswith("   2  0.9 |")]
    assert len(rows) == len(grid.WORKLOADS)
    for row in rows:  # 3 groups of (seed, geometric mean), then the failures of 4 policies
        assert len(row.split("|")) == 5
        assert len(row.split("|")[4].split()[0].split("/")) == 4
    assert "cells missing a goal:" in out
    assert max(len(line) for line in out.splitlines()) <= 100


def test_reporting_seeds_must_not_be_tuning_seeds():
    with pytest.raises(ValueError, match="tuning seeds"):
        run_grid(seeds=(3, 201), pods=(2,), loads=(0.5,), workloads=("seed-lora",),
                 duration=5)


def _report(p90: float, tput: float = 100.0, shed: int = 0, failed: int = 0) -> dict:
    return {"ttft_p90_failed_s": p90, "throughput_tok_s": tput, "shed": shed, "failed": failed}


def test_cell_figures_count_failures_and_flag_missed_goals():
    by_seed = {
        201: {"round-robin": _report(2.0, 100), "least-request": _report(1.0, 100),
              "llm": _report(1.2, 101, shed=3), ORACLE: _report(1.0, 100)},
        202: {"round-robin": _report(math.inf, 90, failed=7), "least-request": _report(math.inf),
              "llm": _report(math.inf, 95), ORACLE: _report(0.5, 100)},
    }
    f = cell_figures(by_seed)
    assert f.vs_oracle[:2] == [1.2, math.inf] and f.vs_oracle[2] == math.inf
    assert f.vs_least[:2] == [1.2, 1.0]  # both inf: alike
    assert math.isclose(f.vs_least[2], math.sqrt(1.2))
    assert f.failures == {"round-robin": 7, "least-request": 0, "llm": 3, ORACLE: 0}
    assert f.misses() == "OL"


def test_a_cell_meeting_every_goal_misses_none():
    by_seed = {201: {"round-robin": _report(3.0, 100), "least-request": _report(1.0, 100),
                     "llm": _report(1.1, 100), ORACLE: _report(1.0, 100)}}
    assert cell_figures(by_seed).misses() == "L"
    by_seed[201]["llm"] = _report(0.9, 99.6)  # 1.00 as printed: not under round-robin's
    assert cell_figures(by_seed).misses() == ""


def test_a_stopped_grid_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "grid.jsonl"
    small = dict(pods=(2,), loads=(0.5,), workloads=("seed-lora",), seeds=(201,), duration=5)
    first = run_grid(checkpoint=path, **small)
    assert len(path.read_text().splitlines()) == len(grid.POLICIES)
    monkeypatch.setattr(grid, "_run_task", lambda task: pytest.fail("ran again"))
    again = run_grid(checkpoint=path, **small)
    assert again.results == first.results
