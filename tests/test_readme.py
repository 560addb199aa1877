"""The README, followed as written: its first command block makes a venv, then installs and
runs the demo and the tests; "Running the pieces" run in its order (ports swapped for free
ones) counts the first request and labels the pod and pool series with their pool; the
Troubleshooting list quotes what the program really says."""

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


def test_the_first_block_makes_a_venv_then_runs_the_demo_and_the_tests() -> None:
    first = commands(README[:README.index("\n```\n") + 5].split("```bash\n", 1)[1])
    assert re.match(r"python3 -m venv \S+ && \. \S+/bin/activate$", first[0]), first
    assert first[1].startswith("pip install -e . && llmtraffic demo"), first
    assert first[2] == "bash scripts/test", first


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


def _said(argv: list[str]) -> str:
    """What `llmtraffic ARGV` prints (stdout and stderr), run in this process."""
    import contextlib
    import io

    from llmtraffic.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        assert main(argv) == 2
    return out.getvalue()


def _error(call) -> str:
    try:
        call()
    except Exception as e:  # the message a command prints after its own prefix
        return str(e)
    raise AssertionError(f"{call} did not refuse")


def messages(tmp_path: Path, monkeypatch, caplog) -> list[str]:
    """The messages the Troubleshooting list quotes, produced by the code that prints them."""
    from llmtraffic import demo
    from llmtraffic.balancer import command, kube
    from llmtraffic.balancer.policy import native
    from llmtraffic.contracts.pods import pods_from_file, require_ports
    from llmtraffic.harness.stack import Proc, vllm_router_binary
    from tests.test_scripts import NO_ROOT

    said = [_said(["demo", "--load", "90"]), _said(["demo", "--out", "/proc/nope"]),
            _said(["balancer", "--kubernetes", "--listen", "localhost:99999"]),
            _said(["balancer", "--kubernetes", "--listen", "8080"]), NO_ROOT]
    bad = tmp_path / "bad.yaml"
    for text in ("pod: []\n", 'pods:\n- {address: "127.0.0.1:1"}\n'
                 '- {address: "127.0.0.1:2300l"}\n'):
        bad.write_text(text)
        said.append(_error(lambda: pods_from_file(str(bad))))
    bad.write_text('pods:\n- {name: a, address: "127.0.0.1:1"}\n')
    require_ports(pods_from_file(str(bad)), str(bad))
    said.append(caplog.text)
    proc = Proc("balancer-llm", [sys.executable, "-c", "raise SystemExit(1)"],
                tmp_path / "balancer-llm.log").start()
    said.append("llmtraffic demo: " + _error(lambda: proc.wait_http("http://127.0.0.1:9/")))
    with monkeypatch.context() as m:
        m.setattr(native, "core", None)
        said.append(demo.core_line())
        m.setenv("PATH", str(tmp_path))
        said.append(_error(vllm_router_binary))
        for blocked in ("grpc", "kubernetes"):
            m.setitem(sys.modules, blocked, None)
        m.delitem(sys.modules, "llmtraffic.balancer.extproc", raising=False)
        said += [_error(command._extproc), _error(lambda: kube.load_api_client(None))]
    return said


#: Rows whose first column is not a message of ours, or one proved where it is printed.
ELSEWHERE = {
    "error: externally-managed-environment": "pip's own message",
    "prometheus   not started (not on the PATH)":
        "tests/llmtraffic/test_demo.py::test_demo_without_prometheus_serves_until_ctrl_c_and_"
        "writes_the_report",
}


def test_troubleshooting_quotes_what_the_program_says(tmp_path: Path, monkeypatch,
                                                      caplog) -> None:
    section = README[README.index("## Troubleshooting"):]
    section = section[:section.index("\n## ")]
    rows = [r.split(" | ")[0] for r in section.splitlines() if r.startswith("| ")][1:]
    quoted = [a or b for row in rows
              for a, b in re.findall(r"``(.+?)\s*``|`([^`]+)`", row.split("|")[1])]
    assert len(quoted) >= 14, quoted
    said = messages(tmp_path, monkeypatch, caplog)
    for text in quoted:
        if text in ELSEWHERE or text == "bench live":
            continue
        parts = [p.strip() for p in text.split("…") if p.strip()]
        assert any(all(p in s for p in parts) for s in said), (text, said)


def test_the_layout_section_names_only_files_in_the_tree() -> None:
    """Every file or folder "How the code is laid out" names (`exporter/tail.py`, and a
    short `policy/row.py` or `filters.py` under the folder just named) is in the tree."""
    section = README[README.index("## How the code is laid out"):]
    section = section[:section.index("\n## ", 1)]
    names = {t for t in re.findall(r"`([^`\s]+)`", section)
             if re.fullmatch(r"[\w.-]+(/[\w.-]+)*/?", t) and (t.endswith((".py", "/")))}
    assert len(names) > 30, names
    files = {str(p.relative_to(ROOT)) + ("/" if p.is_dir() else "")
             for p in ROOT.rglob("*") if ".git" not in p.parts}
    missing = sorted(n for n in names
                     if not any(f == n or f.endswith("/" + n) for f in files))
    assert not missing, f"README's layout names files not in the tree: {missing}"
