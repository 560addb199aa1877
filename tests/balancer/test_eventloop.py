"""The balancer's event loop: uvloop by default when installed, asyncio on request, a clear
error when uvloop is asked for but missing; and the real `llmtraffic balancer` process
serving a completion on uvloop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from llmtraffic.balancer.eventloop import EventLoopError, loop_name, run
from llmtraffic.simulator.server import SimFleet
from tests.balancer.conftest import LABELS, LORAS, SEED_FILES


async def _which_loop() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_auto_is_uvloop_when_installed_and_asyncio_on_request():
    pytest.importorskip("uvloop", reason="uvloop has no build for this platform")
    assert loop_name("auto") == "uvloop"
    assert run(_which_loop(), "auto") == "uvloop"
    assert run(_which_loop(), "asyncio") == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    assert loop_name("auto") == "asyncio"
    assert run(_which_loop(), "auto") == "asyncio"
    with pytest.raises(EventLoopError, match="uvloop is not installed"):
        loop_name("uvloop")


@pytest.mark.e2e
async def test_balancer_process_serves_on_uvloop(tmp_path: Path):
    pytest.importorskip("uvloop", reason="uvloop has no build for this platform")
    fleet = SimFleet(1, time_scale=100.0, lora_modules=LORAS)
    await fleet.start()
    pods = tmp_path / "pods.yaml"
    pods.write_text(yaml.safe_dump({"pods": [
        {"name": "vllm-0", "address": fleet.addresses[0], "labels": dict(LABELS)}]}))
    log = tmp_path / "llmtraffic.balancer.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llmtraffic", "balancer", "--config",
                                 *SEED_FILES, "--pods-file", str(pods), "--listen",
                                 "127.0.0.1:0"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "llmtraffic balancer: http://" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.1)
        line = next(x for x in log.read_text().splitlines() if "balancer: http://" in x)
        assert line.endswith("loop=uvloop"), line
        url = line.split("balancer: ", 1)[1].split()[0]
        async with aiohttp.ClientSession() as s:
            body = {"model": "tweet-summary", "prompt": "hi", "max_tokens": 3}
            async with s.post(f"{url}/v1/completions", headers={"Host": "test.com"},
                              json=body) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["usage"]["completion_tokens"] == 3
    finally:
        proc.terminate()
        proc.wait(10)
        await fleet.stop()
