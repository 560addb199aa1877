"""Event-loop lag of one process serving N simulated pods under streaming load: the fleet
and a 5 ms sleep probe run in a child process, the SSE client in this one; reports lag
p50/p99/max, output tokens/s at the client and the pod process's CPU.

    python -m bench.sim_loop_lag [--pods 4] [--concurrency 32] [--duration 20]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import multiprocessing
import os
import random
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Callable

import aiohttp
import orjson

PROBE_INTERVAL = 0.005
GOAL_MS = 10.0
TOPICS = ("the quarterly sales report for the northern region", "a migration plan from a "
          "monolith to services", "the failure modes of a replicated key-value store",
          "a week of vegetarian dinners for four people", "the history of the printing press",
          "how to tune garbage collection in a JVM service under memory pressure")


def make_prompt(rng: random.Random) -> str:
    """A realistic prompt of a few hundred characters."""
    topic = rng.choice(TOPICS)
    return (f"You are a careful assistant. Read the context and answer in plain words.\n"
            f"Context: the user is preparing {topic} and wants a short, structured summary "
            f"with the three most important points, one risk and one next step. Request "
            f"#{rng.randrange(10**6)}.\nQuestion: summarise {topic} for a busy reader.\n"
            f"Answer:")


# ---- the pod process -------------------------------------------------------------------

def _pod_process(conn: Connection, pods: int, options: dict[str, Any]) -> None:
    asyncio.run(_serve_and_probe(conn, pods, options))


async def _serve_and_probe(conn: Connection, pods: int, options: dict[str, Any]) -> None:
    """Start the fleet, send its URLs; on "begin" reset the probe and CPU clock; on "end"
    send back lag samples (seconds), CPU seconds and wall seconds; then stop."""
    from llmtraffic.simulator.server import SimFleet

    # the client cuts its streams at the deadline: aiohttp would log each late write
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    loop = asyncio.get_running_loop()
    fleet = await SimFleet(pods, **options).start()
    lags: list[float] = []

    async def probe() -> None:
        while True:
            t = loop.time()
            await asyncio.sleep(PROBE_INTERVAL)
            lags.append(loop.time() - t - PROBE_INTERVAL)

    task = asyncio.create_task(probe())
    conn.send(fleet.urls)
    await loop.run_in_executor(None, conn.recv)  # "begin"
    lags.clear()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await loop.run_in_executor(None, conn.recv)  # "end"
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    conn.send({"lags": list(lags), "cpu": cpu, "wall": wall})
    task.cancel()
    await fleet.stop()


# ---- the client ------------------------------------------------------------------------

@dataclass
class ClientCounts:
    tokens: int = 0  # content chunks received in the window (one token each)
    completed: int = 0
    usage_tokens: int = 0  # completion_tokens reported by completed requests
    completed_chunks: int = 0  # content chunks of completed requests
    errors: dict[str, int] = field(default_factory=dict)


async def _one_request(session: aiohttp.ClientSession, url: str, model: str, prompt: str,
                       max_tokens: int, counts: ClientCounts) -> None:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    chunks = 0
    async with session.post(f"{url}/v1/completions", json=body) as resp:
        if resp.status != 200:
            key = f"http {resp.status}"
            counts.errors[key] = counts.errors.get(key, 0) + 1
            return
        async for line in resp.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            obj = orjson.loads(line[6:])
            if obj.get("usage"):
                counts.completed += 1
                counts.completed_chunks += chunks
                counts.usage_tokens += obj["usage"]["completion_tokens"]
            elif obj["choices"] and obj["choices"][0]["text"]:
                chunks += 1
                counts.tokens += 1


async def _slot(session: aiohttp.ClientSession, url: str, model: str, max_tokens: int,
                deadline: float, rng: random.Random, counts: ClientCounts) -> None:
    while time.monotonic() < deadline:
        try:
            await _one_request(session, url, model, make_prompt(rng), max_tokens, counts)
        except aiohttp.ClientError as e:
            key = type(e).__name__
            counts.errors[key] = counts.errors.get(key, 0) + 1


async def drive(urls: list[str], model: str, concurrency: int, duration: float,
                max_tokens: int, seed: int, at_deadline: Callable[[], None] = lambda: None
                ) -> tuple[ClientCounts, float, float]:
    """`concurrency` closed-loop slots per URL for `duration` s; at the deadline
    `at_deadline()` runs, then in-flight streams are cut. Returns counts, wall and client
    CPU seconds."""
    counts = ClientCounts()
    rng = random.Random(seed)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=None)) as session:
        cpu0, t0 = time.process_time(), time.monotonic()
        deadline = t0 + duration
        tasks = [asyncio.create_task(_slot(session, u, model, max_tokens, deadline,
                                           random.Random(rng.random()), counts))
                 for u in urls for _ in range(concurrency)]
        await asyncio.wait(tasks, timeout=duration)
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
        at_deadline()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return counts, wall, cpu


# ---- the benchmark ---------------------------------------------------------------------

def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def run(pods: int = 4, concurrency: int = 32, duration: float = 20.0, max_tokens: int = 128,
        time_scale: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Run the fleet in a child process and the client here; return the figures."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_pod_process, daemon=True,
                       args=(child, pods, {"time_scale": time_scale, "seed": seed}))
    proc.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the simulated fleet did not start within 60 s")
        urls = parent.recv()
        from llmtraffic.simulator.profile import DEFAULT_PROFILE, get_profile
        model = get_profile(DEFAULT_PROFILE).model
        parent.send("begin")
        counts, wall, client_cpu = asyncio.run(drive(
            urls, model, concurrency, duration, max_tokens, seed, lambda: parent.send("end")))
        if not parent.poll(30):
            raise RuntimeError("the fleet process did not report its figures")
        pod = parent.recv()
    finally:
        proc.join(15)
        if proc.is_alive():
            proc.kill()
    lags_ms = [x * 1000 for x in pod["lags"]]
    return {"pods": pods, "concurrency": concurrency, "duration_s": wall,
            "lag_samples": len(lags_ms), "lag_p50_ms": percentile(lags_ms, 0.50),
            "lag_p99_ms": percentile(lags_ms, 0.99), "lag_max_ms": max(lags_ms),
            "tokens": counts.tokens, "tokens_per_s": counts.tokens / wall,
            "completed": counts.completed, "usage_tokens": counts.usage_tokens,
            "completed_chunks": counts.completed_chunks, "errors": counts.errors,
            "pod_cpu_pct": pod["cpu"] / pod["wall"] * 100,
            "client_cpu_pct": client_cpu / wall * 100, "load_avg_1m": os.getloadavg()[0],
            "cpus": os.cpu_count() or 1}


def report(r: dict[str, Any]) -> str:
    head = (f"{'pods':>4} {'conc/pod':>8} {'duration':>8} {'lag p50':>8} {'lag p99':>8} "
            f"{'lag max':>8} {'tokens/s':>9} {'pod CPU':>8} {'client CPU':>10}")
    row = (f"{r['pods']:>4} {r['concurrency']:>8} {r['duration_s']:>7.1f}s "
           f"{r['lag_p50_ms']:>6.2f}ms {r['lag_p99_ms']:>6.2f}ms {r['lag_max_ms']:>6.1f}ms "
           f"{r['tokens_per_s']:>9.0f} {r['pod_cpu_pct']:>7.0f}% {r['client_cpu_pct']:>9.0f}%")
    margin = GOAL_MS - r["lag_p99_ms"]
    goal = (f"goal: lag p99 < {GOAL_MS:.0f} ms: "
            + (f"met by {margin:.2f} ms" if margin > 0 else f"missed by {-margin:.2f} ms"))
    extra = (f"{r['lag_samples']} probe wake-ups ({PROBE_INTERVAL * 1000:.0f} ms sleeps); "
             f"{r['completed']} requests completed, {r['tokens']} tokens streamed; "
             f"errors: {r['errors'] or 'none'}\n"
             f"machine load average (1 min) {r['load_avg_1m']:.1f} on {r['cpus']} CPUs "
             f"(above the CPU count, other processes delay the loop too)")
    return "\n".join([head, row, extra, goal])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sim_loop_lag", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=32, help="streams per pod")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--time-scale", type=float, default=1.0,
                    help="simulator speed-up (1 = real time)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    r = run(args.pods, args.concurrency, args.duration, args.max_tokens, args.time_scale,
            args.seed)
    print(report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
