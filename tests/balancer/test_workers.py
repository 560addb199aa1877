"""`llmtraffic balancer --workers N` as real processes: every worker serves the one port,
/metrics counts each request once whichever worker answers the scrape, the access log holds
every worker's whole lines, each pod is scraped once per period for all the workers, and
SIGTERM drains and stops them all."""

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
import yaml

from tests.balancer.conftest import BASE, LABELS, SEED_FILES
from tests.fixtures.fakepod import FakePod

pytestmark = pytest.mark.e2e

WORKERS = 2


async def start_balancer(tmp_path: Path, pods: list[FakePod], *extra: str
                         ) -> tuple[subprocess.Popen, str]:
    (tmp_path / "pods.yaml").write_text(yaml.safe_dump({"pods": [
        {"name": f"vllm-{i}", "address": p.address, "labels": dict(LABELS)}
        for i, p in enumerate(pods)]}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmtraffic.cli", "balancer", "--config", *SEED_FILES,
         "--pods-file", "pods.yaml", "--listen", "127.0.0.1:0", "--workers", str(WORKERS),
         "--access-log", "access.log", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out = b""
    while True:
        line = await asyncio.to_thread(proc.stdout.readline)  # type: ignore[union-attr]
        assert line, f"the balancer exited {proc.wait()}:\n{out.decode()}"
        out += line
        if line.startswith(b"llmtraffic balancer: http://"):
            assert f"workers={WORKERS}".encode() in line
            return proc, line.split()[2].decode()


def worker_pids(proc: subprocess.Popen) -> set[int]:
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return {int(c) for c in children}


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out.decode()


async def fresh_get(url: str) -> tuple[int, bytes]:
    """A GET on a new connection (the kernel hashes each connection to one worker)."""
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.read()


async def test_every_worker_serves_and_metrics_count_each_request_once(tmp_path):
    pods = [await FakePod(BASE).start() for _ in range(2)]
    proc, url = await start_balancer(tmp_path, pods)
    try:
        assert len(worker_pids(proc)) == WORKERS
        seen: set[int] = set()
        for _ in range(200):  # each new connection lands on one worker or another
            status, body = await fresh_get(f"{url}/health")
            assert status == 200
            seen.add(orjson.loads(body)["worker"])
            if len(seen) == WORKERS:
                break
        assert seen == set(range(WORKERS))
        k = 30
        for i in range(k):
            async with aiohttp.ClientSession() as s, s.post(
                    f"{url}/v1/completions", json={"model": "tweet-summary", "prompt": "hi"},
                    headers={"Host": "test.com"}) as r:
                assert r.status == 200, await r.text()
        for _ in range(8):  # whichever worker answers the scrape: k, not its own share
            status, page = await fresh_get(f"{url}/metrics")
            assert status == 200
            counted = [line for line in page.decode().splitlines()
                       if line.startswith("llmtraffic_balancer_requests_total{")]
            assert len(counted) == 1 and float(counted[0].rsplit(" ", 1)[1]) == k, counted
            assert page.decode().count("# TYPE llmtraffic_balancer_requests_total") == 1
    finally:
        rc, out = stop(proc)
        for p in pods:
            await p.stop()
    assert rc == 0, out
    lines = (tmp_path / "access.log").read_bytes().splitlines()
    assert len(lines) == k and all(orjson.loads(x)["response_code"] == 200 for x in lines)


async def test_workers_share_their_scrapes_each_pod_is_read_once_per_period(tmp_path):
    """Each pod's page is read about once per interval for all the workers (not once per
    worker), and every worker keeps every pod fresh with the others' scrapes: longer than
    stale-after (2 s) past the start, every worker still counts all four pods ready."""
    pods = [await FakePod(BASE).start() for _ in range(4)]
    interval = 0.2
    proc, url = await start_balancer(tmp_path, pods, "--scrape-interval", str(interval))
    try:
        await asyncio.sleep(1.0)  # the workers reached each other
        before = [p.hits["/metrics"] for p in pods]
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(3.0)
        elapsed = loop.time() - started
        hits = [p.hits["/metrics"] - b for p, b in zip(pods, before)]
        # once a period (10% jitter) at most; a scrape by each worker would be twice that
        assert all(1 <= h <= 1.3 * elapsed / interval for h in hits), (hits, elapsed)
        ready = set()
        for _ in range(20):  # new connections: both workers answer some
            status, body = await fresh_get(f"{url}/ready")
            ready.add((status, orjson.loads(body)["ready_pods"]))
        assert ready == {(200, 4)}
    finally:
        rc, out = stop(proc)
        for p in pods:
            await p.stop()
    assert rc == 0, out


async def test_sigterm_drains_every_worker_and_stops_them_all(tmp_path):
    pod = await FakePod(BASE, answer="slow-stream").start()
    proc, url = await start_balancer(tmp_path, [pod], "--drain-timeout", "0.5")
    pids = worker_pids(proc)
    try:
        async def stream(s: aiohttp.ClientSession) -> list[bytes]:
            async with s.post(f"{url}/v1/completions", json={
                    "model": "tweet-summary", "prompt": "hi",
                    "max_tokens": 100000, "stream": True}, headers={"Host": "test.com"}) as r:
                return [line async for line in r.content if line.startswith(b"data:")]

        sessions = [aiohttp.ClientSession() for _ in range(6)]
        streams = [asyncio.create_task(stream(s)) for s in sessions]
        for _ in range(200):
            if pod.requests == len(streams):
                break
            await asyncio.sleep(0.05)
        assert pod.requests == len(streams)
        rc, out = await asyncio.to_thread(stop, proc)
        events = await asyncio.wait_for(asyncio.gather(*streams), 30)
        for s in sessions:
            await s.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await pod.stop()
    assert rc == 0, out
    assert all(b"drain deadline" in e[-1] for e in events)
    assert not [p for p in pids if Path(f"/proc/{p}").exists()
                and "zombie" not in Path(f"/proc/{p}/status").read_text()]
    lines = [orjson.loads(x) for x in (tmp_path / "access.log").read_bytes().splitlines()]
    assert len(lines) == len(streams)
    assert all((r["response_code"], r["response_flags"]) == (503, "DT") for r in lines)


def test_extproc_refuses_more_than_one_worker(tmp_path):
    (tmp_path / "pods.yaml").write_text("pods: []\n")
    r = subprocess.run([sys.executable, "-m", "llmtraffic.cli", "balancer", "--config",
                        *SEED_FILES, "--pods-file", "pods.yaml", "--mode", "extproc",
                        "--workers", "2"], capture_output=True, text=True, cwd=tmp_path,
                       timeout=60)
    assert r.returncode == 2 and "--workers applies to --mode proxy" in r.stderr


def test_the_default_is_the_cores_available_within_the_cgroup_cpu_limit(tmp_path):
    from llmtraffic.balancer.workers import default_workers

    cores = len(os.sched_getaffinity(0))
    limit = tmp_path / "cpu.max"
    limit.write_text("max 100000\n")
    assert default_workers(str(limit)) == cores
    limit.write_text("150000 100000\n")  # 1.5 CPUs: 2 workers, if there are 2 cores
    assert default_workers(str(limit)) == min(cores, 2)
    limit.write_text("10000 100000\n")
    assert default_workers(str(limit)) == 1
    assert default_workers(str(tmp_path / "none")) == cores
