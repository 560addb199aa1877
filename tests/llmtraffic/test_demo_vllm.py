"""`llmtraffic demo --engine vllm`: one fleet of engines behind each balancer in turn, in
real time, on the workload the CPU carries. Here simulated pods stand in for the real ones
(the real engines' start is what `bash .ci/run` pays once, for tests/realvllm/)."""

from __future__ import annotations

import json

import pytest

from llmtraffic import demo
from llmtraffic.cli import main
from llmtraffic.contracts.flags import from_flags
from llmtraffic.simulator.server import run_fleet_in_thread
from llmtraffic.simulator.workloads import SEED_ADAPTERS


def test_the_engine_sets_its_defaults():
    parser = main.__globals__["build_parser"]()
    sim = demo.resolve_engine(from_flags(demo.DemoOptions, parser.parse_args(["demo"])))
    assert (sim.pods, sim.load, sim.time_scale) == (3, 0.9, 2.0)
    real = demo.resolve_engine(from_flags(demo.DemoOptions, parser.parse_args(
        ["demo", "--engine", "vllm", "--time-scale", "4"])))
    assert (real.pods, real.load, real.time_scale) == (2, 0.3, 1.0)
    given = demo.resolve_engine(from_flags(demo.DemoOptions, parser.parse_args(
        ["demo", "--engine", "vllm", "--pods", "3", "--load", "0.5"])))
    assert (given.pods, given.load) == (3, 0.5)


@pytest.mark.timeout(300)
def test_the_policies_take_one_fleet_in_turn(tmp_path, monkeypatch, capsys):
    loras = {a: f"/adapters/{a}" for a in SEED_ADAPTERS}
    with run_fleet_in_thread(2, lora_modules=loras) as fleet:
        monkeypatch.setattr(demo.Demo, "_start_vllm", lambda self: tuple(fleet.urls))
        out = tmp_path / "demo"
        assert main(["demo", "--engine", "vllm", "--quick", "--no-prometheus", "--no-serve",
                     "--out", str(out)]) == 0
        served = sum(sum(s.engine.stats().finished.values()) for s in fleet.servers)
    results = json.loads((out / "results.json").read_text())
    assert results["workload"] == "cpu-mix" and results["pods"] == 2
    done = {p: r["completed"] for p, r in results["policies"].items()}
    assert set(done) == {"llm", "round-robin"} and all(done.values())
    assert served == sum(done.values())  # both balancers used the same two pods
    text = capsys.readouterr().out
    assert "every time here is wall-clock seconds" in text
