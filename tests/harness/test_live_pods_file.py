"""`llmtraffic bench live --pods-file`: the routers in turn in front of pods this command did
not start (here simulated pods in this process; on a CPU machine the real vLLM fleet)."""

from __future__ import annotations

import json

import pytest

from llmtraffic.cli import main
from llmtraffic.simulator.server import run_fleet_in_thread
from llmtraffic.simulator.workloads import SEED_ADAPTERS


@pytest.mark.timeout(180)
def test_live_drives_pods_it_did_not_start(tmp_path, capsys):
    loras = {a: f"/adapters/{a}" for a in SEED_ADAPTERS}
    with run_fleet_in_thread(2, time_scale=10.0, lora_modules=loras) as fleet:
        pods = tmp_path / "pods.yaml"
        pods.write_text("pods:\n" + "".join(f"- {{name: p{i}, address: '{a}'}}\n"
                                             for i, a in enumerate(fleet.addresses)))
        out = tmp_path / "live.json"
        assert main(["bench", "live", "--pods-file", str(pods), "--workload", "cpu-mix",
                     "--routers", "llmtraffic,llmtraffic:round-robin", "--rate", "3",
                     "--duration", "3", "--json", str(out),
                     "--workdir", str(tmp_path / "w")]) == 0
        served = sum(s.engine.stats().finished.get("length", 0) for s in fleet.servers)
    data = json.loads(out.read_text())
    assert data["pods"] == 2
    routers = data["policies"]
    assert set(routers) == {"llmtraffic:llm", "llmtraffic:round-robin"}
    assert all(r["completed"] > 0 and r["failed"] == 0 for r in routers.values())
    assert served == sum(r["completed"] for r in routers.values())  # all went to these pods
    assert main(["bench", "live", "--pods-file", str(pods), "--time-scale", "2",
                 "--rate", "1", "--duration", "1", "--routers", "llmtraffic"]) == 2
    assert "--time-scale applies to the pods this command starts" in capsys.readouterr().err
