"""Ctrl-C while the demo's load runs: one line saying it stops, exit status 130, every
process it started gone; no asyncio or aiohttp noise, no traceback."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(300)
def test_ctrl_c_during_the_load_stops_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmtraffic", "demo", "--duration", "60", "--no-prometheus",
         "--no-serve", "--out", "demo"], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    before: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            before.append(line)
            if re.search(r"\] +\d+s of \d+s of arrivals .*llm: [1-9]", line):
                break  # requests are in flight through both balancers
        else:
            pytest.fail("the load never started:\n" + "".join(before))
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(before)
    assert proc.returncode == 130, text + rest
    noise = [ln for ln in rest.splitlines() if ln.strip() and not ln.startswith("[")]
    assert noise == ["stopping"], rest
    ports = {int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)", text)}
    assert len(ports) >= 9 and not [p for p in ports if _listening(p)]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
