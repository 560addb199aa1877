"""`llmtraffic sim --engine vllm` says in one line what is missing, and writes the balancer's
pods file in the simulator's shape (the real start is in tests/realvllm)."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from llmtraffic.contracts.pods import pods_from_file
from llmtraffic.simulator.vllmfleet import VllmFleet, VllmFleetConfig, VllmPod


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmtraffic", "sim", "--engine", "vllm",
                           *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def test_missing_vllm_is_one_line_naming_the_install_command(tmp_path):
    r = run(LLMTRAFFIC_VLLM_PYTHON=str(tmp_path / "nope"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "bash scripts/install-vllm" in lines[0]


def test_a_model_dir_without_config_is_refused(tmp_path):
    r = run("--model", str(tmp_path))
    assert r.returncode == 2 and "no config.json" in r.stderr


def test_the_pods_file_reads_as_every_command_reads_it(tmp_path):
    fleet = VllmFleet(VllmFleetConfig(pods=2))
    fleet.pods = [VllmPod(f"vllm-{i}", "127.0.0.1", 8001 + i, tmp_path / f"{i}.log")
                  for i in range(2)]
    path = fleet.write_pods_file(tmp_path / "pods.yaml")
    pods = pods_from_file(str(path))
    assert [(p.name, p.address, p.labels) for p in pods] == [
        ("vllm-0", "127.0.0.1:8001", {"app": "vllm-llama2-7b-pool"}),
        ("vllm-1", "127.0.0.1:8002", {"app": "vllm-llama2-7b-pool"})]
    assert yaml.safe_load(path.read_text())["pods"][0]["name"] == "vllm-0"


def test_pods_share_the_cores_out_instead_of_oversubscribing_them():
    """torch's default of a thread per core in every pod made two pods on two busy cores
    5-20x slower per decode step (OpenMP threads spinning at their barriers)."""
    from llmtraffic.simulator.vllmfleet import omp_threads

    assert omp_threads(2, [0, 1]) == 1 and omp_threads(1, [0, 1]) == 2
    assert omp_threads(4, [0, 1]) == 1 and omp_threads(2, list(range(8))) == 4
    env = VllmFleet(VllmFleetConfig(pods=2)).environment(0)
    assert env["OMP_NUM_THREADS"] == str(omp_threads(2))
    custom = VllmFleet(VllmFleetConfig(pods=2, extra_env={"OMP_NUM_THREADS": "3"}))
    assert custom.environment(1)["OMP_NUM_THREADS"] == "3"
