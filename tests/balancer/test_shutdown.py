"""Honest shutdown: requests in flight get --drain-timeout; then a stream ends with an error
event and any other request gets a 503, each logged 503 DT (not a client hang-up), in the
proxy and the ext_proc picker; SIGHUP reopens logs in every process and is never fatal."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.balancer.conftest import BASE, LABELS, SEED_FILES, records, wait_for
from tests.fixtures.fakepod import FakePod

pytestmark = pytest.mark.e2e


async def test_the_drain_deadline_cuts_streams_with_an_error_event_and_says_so(make_app):
    slow, hole = await FakePod(BASE, answer="slow-stream").start(), \
        await FakePod(BASE, answer="hang").start()
    try:
        app = await make_app([slow.address], drain_timeout=0.5)
        held = await make_app([hole.address], drain_timeout=0.5)
        async with aiohttp.ClientSession() as s:
            async def stream() -> list[bytes]:
                events = []
                async with s.post(f"http://127.0.0.1:{app.port}/v1/completions", json={
                        "model": "llama2", "prompt": "hi", "max_tokens": 100000,
                        "stream": True}, headers={"Host": "test.com"}) as r:
                    async for line in r.content:
                        if line.startswith(b"data:"):
                            events.append(line)
                return events

            async def whole() -> tuple[int, bytes]:
                async with s.post(f"http://127.0.0.1:{held.port}/v1/completions", json={
                        "model": "llama2", "prompt": "hi"}, headers={"Host": "test.com"}) as r:
                    return r.status, await r.read()

            streaming, waiting = asyncio.create_task(stream()), asyncio.create_task(whole())
            await wait_for(lambda: slow.requests == 1 and hole.requests == 1,
                           "both requests at their pods")
            await asyncio.sleep(0.2)  # a few events through
            await asyncio.wait_for(asyncio.gather(app.stop(), held.stop()), 30)
            events, (status, body) = await asyncio.wait_for(
                asyncio.gather(streaming, waiting), 30)
    finally:
        await slow.stop()
        await hole.stop()
    assert len(events) >= 2 and b"drain deadline" in events[-1] and b'"code":503' in events[-1]
    assert status == 503 and b"drain deadline" in orjson.loads(body)["error"]["message"].encode()
    for a in (app, held):
        (rec,) = records(a)
        assert rec["response_code"] == 503 and rec["response_flags"] == "DT"


async def test_the_ext_proc_picker_logs_a_stream_cut_at_its_drain_deadline(tmp_path):
    import grpc
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

    from llmtraffic.balancer.discovery import StaticDiscovery
    from llmtraffic.balancer.extproc import ExtProcOptions, ExtProcServer
    from llmtraffic.contracts.store import Pod
    from tests.balancer.test_extproc import headers

    pod = await FakePod(BASE).start()
    server = ExtProcServer(
        StaticDiscovery(SEED_FILES, pods=[Pod("vllm-0", pod.address, dict(LABELS))]),
        ExtProcOptions(listen="127.0.0.1:0", health_listen="127.0.0.1:0", seed=7,
                       drain_timeout=0.5, access_log=str(tmp_path / "access.log")))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = pb_grpc.ExternalProcessorStub(channel).Process()
            body = orjson.dumps({"model": "tweet-summary", "prompt": "hi", "stream": True})
            await call.write(pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=headers(
                {":method": "POST", ":path": "/v1/completions", ":authority": "test.com"}))))
            await call.read()
            await call.write(pb.ProcessingRequest(request_body=pb.HttpBody(
                body=body, end_of_stream=True)))
            await call.read()
            await call.write(pb.ProcessingRequest(response_headers=pb.HttpHeaders(
                headers=headers({":status": "200", "content-type": "text/event-stream"}))))
            await call.read()  # the stream is under way: now the picker stops
            await asyncio.wait_for(server.stop(), 30)
    finally:
        await pod.stop()
    (line,) = (tmp_path / "access.log").read_bytes().splitlines()
    rec = orjson.loads(line)
    assert rec["response_code"] == 503 and rec["response_flags"] == "DT"


def start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llmtraffic.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.parametrize("argv", [
    ["balancer", "--config", *SEED_FILES, "--pods-file", "pods.yaml",
     "--listen", "127.0.0.1:0"],  # no access log: SIGHUP used to kill it
    ["balancer", "--config", *SEED_FILES, "--pods-file", "pods.yaml", "--mode", "extproc",
     "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0"],
    ["exporter", "--access-log", "access.log", "--enriched-log", "enriched.log",
     "--listen", "127.0.0.1:0"],
], ids=["proxy", "extproc", "exporter"])
def test_sighup_reopens_logs_and_is_never_fatal(argv, tmp_path):
    (tmp_path / "pods.yaml").write_text("pods: []\n")
    (tmp_path / "access.log").write_text("")
    proc = start(argv, tmp_path)
    try:
        out = b""
        while b"SIGHUP" not in out:
            line = proc.stdout.readline()
            assert line, f"exited {proc.poll()}: {out.decode()}"
            out += line
            if b"listening" in line or b"http://" in line or b"grpc://" in line:
                for _ in range(3):
                    proc.send_signal(signal.SIGHUP)
                    assert proc.poll() is None
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
