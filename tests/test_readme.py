"""The README, followed as written: "Running the pieces" run in its order (ports swapped for
free ones) counts the first request and labels the pod and pool series with their pool."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmtraffic.harness.stack import consecutive_ports, free_port

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def block(after: str, lang: str) -> str:
    """The first ```lang block after the line `after`."""
    start = README.index(after)
    found = re.search(rf"^```{lang}\n(.*?)^```", README[start:], re.S | re.M)
    assert found, f"no ```{lang} block after {after!r}"
    return found.group(1)


def commands(text: str) -> list[str]:
    """Shell commands, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()
            if line.strip()]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def _wait(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{proc.args} exited"
        try:
            _get(url)
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer")


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_running_the_pieces_in_order_counts_the_first_request(tmp_path: Path) -> None:
    base, balancer, exporter = consecutive_ports(3), free_port(), free_port()
    ports = {"8001": base, "8002": base + 1, "8003": base + 2, "8080": balancer,
             "9100": exporter}

    def local(text: str) -> str:
        return re.sub(r"\b(8001|8002|8003|8080|9100)\b", lambda m: str(ports[m.group(1)]),
                      text)

    (tmp_path / "deploy").symlink_to(ROOT / "deploy")
    (tmp_path / "pods.yaml").write_text(local(block("## Running the pieces", "yaml")))
    procs: list[subprocess.Popen] = []
    try:
        for cmd in commands(local(block("## Running the pieces", "bash"))):
            name = cmd.split()[1] if cmd.startswith("llmtraffic ") else cmd.split()[0]
            if name in ("sim", "balancer", "exporter"):
                argv = f"exec {shlex.quote(sys.executable)} -m {cmd}"
                procs.append(subprocess.Popen(["bash", "-c", argv], cwd=tmp_path,
                                              start_new_session=True,
                                              stdout=subprocess.DEVNULL,
                                              stderr=subprocess.STDOUT))
                ready = {"sim": [f"http://127.0.0.1:{base + i}/health" for i in range(3)],
                         "balancer": [f"http://127.0.0.1:{balancer}/ready"],
                         "exporter": [f"http://127.0.0.1:{exporter}/health"]}[name]
                for url in ready:
                    _wait(url, procs[-1])
            elif name == "curl":
                done = subprocess.run(["bash", "-c", cmd + " -sf"], cwd=tmp_path,
                                      capture_output=True, text=True, timeout=60)
                assert done.returncode == 0 and '"choices"' in done.stdout, done
        assert len(procs) == 3, "the block no longer starts sim, balancer and exporter"
        counted = pools = None
        for _ in range(50):
            page = _get(f"http://127.0.0.1:{exporter}/metrics")
            families = {f.name: f for f in text_string_to_metric_families(page)}
            counted = sum(s.value for s in families["asm_llm_proxy_completion_tokens"].samples
                          if s.name.endswith("_total"))
            pools = {s.labels["pool"] for s in families["llmtraffic_pool_ready_pods"].samples}
            if counted and pools:
                break
            time.sleep(0.2)
        assert counted, "the exporter did not count the README's request"
        assert pools == {"vllm-llama2-7b-pool"}, pools
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
