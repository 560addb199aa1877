"""The other clients' latency while the balancer is attacked: normal clients send completions
through the balancer (this process) while, in turn, nothing else happens (baseline), hostile
clients send 8 MB bodies that are cheap to make and costly to handle (hostile-body: empty
lists, `{}`s with an escaped key, 100,000 messages or prompts), or one more pod in the pool
accepts requests and never answers while its page says idle (black-hole-pod). Prints each
scenario's p50 and p90 and, round by round, its p50 as a ratio to that round's baseline
(the goal: at most 1.5x); the rounds alternate the scenarios so that a change in the
machine's load falls on each alike.

    python -m bench.hostile [--pods 3] [--clients 4] [--hostile 2] [--hostile-rate 4]
        [--seconds 8] [--rounds 3]

Each program runs in its own process: the simulated pods, the balancer, the hostile clients
and the black hole, so none of them shares an event loop with the clients measured. The
hostile clients start bodies at a fixed rate (`--hostile-rate`, 4 a second: 32 MB/s of
such bodies in flight), not back to back: a closed loop would measure how many requests of
any kind the machine serves, not what these bodies cost. They run at the lowest CPU
priority (nice 19), standing in for clients on other machines: on a 2-core box their own
cost of making and sending 8 MB bodies would otherwise be counted against the balancer.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import yaml

from bench.balancer_overhead import (POOL_LABELS, HOST, Processes, Setup,
                                     _seed_loras, config_files, start_balancer, wait_ready)
from llmtraffic.simulator.workloads import BASE_MODEL

GOAL = 1.5  # the others' p50 under attack, at most this times the baseline's
BODY_BYTES = 8 << 20


def hostile_bodies() -> list[tuple[str, bytes]]:
    """Valid JSON that is cheap to send and was costly to take in (issue 19, case 1)."""
    def of(key: bytes, item: bytes, n: int, head: bytes = b'"prompt": "hi", ') -> bytes:
        return (b'{"model": "' + BASE_MODEL.encode() + b'", ' + head + b'"' + key
                + b'": [' + b",".join([item] * n) + b"]}")

    return [("empty-lists", of(b"x", b"[]", BODY_BYTES // 3)),
            ("escaped-key-objects", of(b"x", b'{"\\u0041":1}', BODY_BYTES // 13)),
            ("100k-messages", of(b"messages", b'{"role":"user","content":"hi"}', 100_000,
                                 b"")),
            ("100k-prompts", of(b"prompt", b'"hi"', 100_000, b""))]


async def send_hostile(url: str, clients: int, seconds: float, rate: float
                       ) -> dict[str, int]:
    """`clients` senders for `seconds`, each starting a body every `clients / rate` seconds
    (or when its last one is answered, if later): status -> count."""
    import aiohttp

    bodies = hostile_bodies()
    statuses: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        async def sender(k: int) -> None:
            i = k
            period = clients / rate
            next_at = time.monotonic() + k * period / clients
            while time.monotonic() < deadline:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at += period
                name, body = bodies[i % len(bodies)]
                i += 1
                try:
                    async with s.post(f"{url}/v1/completions", data=body, headers={
                            "Host": HOST, "Content-Type": "application/json"}) as r:
                        await r.read()
                        key = f"{name} {r.status}"
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    key = f"{name} {type(e).__name__}"
                statuses[key] = statuses.get(key, 0) + 1

        await asyncio.gather(*(sender(k) for k in range(clients)))
    return statuses


async def serve_black_hole(port: int) -> None:
    """A pod that accepts every request and never answers; its page says it is idle."""
    from aiohttp import web

    from llmtraffic.contracts import vllm

    page = "".join(f'{name}{{engine="0",model_name="{BASE_MODEL}"}} 0\n' for name in (
        vllm.NUM_REQUESTS_RUNNING, vllm.NUM_REQUESTS_WAITING, vllm.KV_CACHE_USAGE)).encode()
    held = 0

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/plain")

    async def hole(request: web.Request) -> web.Response:
        nonlocal held
        held += 1
        await asyncio.sleep(3600)
        return web.Response(status=503)

    app = web.Application(client_max_size=BODY_BYTES * 2)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{tail:.*}", hole)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"black hole on 127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


SCENARIOS = ("baseline", "hostile-body", "black-hole-pod")


@dataclass
class Window:
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def p(self, q: float) -> float:
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


@dataclass
class Run:
    """One scenario: its windows, one per round."""

    name: str
    windows: list[Window] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, w: Window) -> None:
        self.windows.append(w)

    def pooled(self) -> Window:
        out = Window()
        for w in self.windows:
            out.latencies_ms += w.latencies_ms
            for k, v in w.errors.items():
                out.errors[k] = out.errors.get(k, 0) + v
        return out


async def measure(url: str, clients: int, seconds: float, name: str) -> Window:
    """`clients` normal clients, each one request at a time, for `seconds`."""
    import aiohttp

    run = Window()
    body = orjson.dumps({"model": BASE_MODEL, "max_tokens": 16, "ignore_eos": True,
                         "prompt": "Write as if you were a critic: San Francisco " * 4})
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as s:
        async def client() -> None:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                try:
                    async with s.post(f"{url}/v1/completions", data=body, headers={
                            "Host": HOST, "Content-Type": "application/json"}) as r:
                        await r.read()
                        ok = r.status == 200
                        key = f"http {r.status}"
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    ok, key = False, type(e).__name__
                if ok:
                    run.latencies_ms.append((time.perf_counter() - t0) * 1000)
                else:
                    run.errors[key] = run.errors.get(key, 0) + 1

        await asyncio.gather(*(client() for _ in range(clients)))
    return run


def _pods_file(path: Path, urls: list[str], hole: str | None = None) -> Path:
    pods = [{"name": f"sim-{i}", "address": u.removeprefix("http://"),
             "labels": dict(POOL_LABELS)} for i, u in enumerate(urls)]
    if hole:
        pods.append({"name": "black-hole", "address": hole, "labels": dict(POOL_LABELS)})
    path.write_text(yaml.safe_dump({"pods": pods}))
    return path


def _free_port() -> int:
    from bench.balancer_overhead import _free_port as free

    return free()


def run(pods: int, clients: int, hostile: int, seconds: float, time_scale: float,
        rounds: int, rate: float) -> list[Run]:
    """`rounds` rounds of baseline, hostile-body and black-hole-pod windows of `seconds`
    each, so a change in the machine's load falls on every scenario alike."""
    runs = {name: Run(name) for name in SCENARIOS}
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmpdir:
        tmp = Path(tmpdir)
        procs = Processes(tmp)
        try:
            urls, _ = procs.start_pods(pods, {"time_scale": time_scale, "seed": 0,
                                              "lora_modules": _seed_loras()})
            configs = config_files(tmp)
            plain = start_balancer(procs, Setup(urls, configs, _pods_file(
                tmp / "pods.yaml", urls), None), "llm")
            port = _free_port()
            _, hole_log = procs.spawn("black-hole", [
                sys.executable, "-m", "bench.hostile", "--black-hole", str(port)])
            _wait(hole_log, "black hole on")
            holed = start_balancer(procs, Setup(urls, configs, _pods_file(
                tmp / "pods-hole.yaml", urls, f"127.0.0.1:{port}"), None), "llm")
            body = orjson.dumps({"model": BASE_MODEL, "prompt": "hi", "max_tokens": 2})
            for target in (plain, holed):
                asyncio.run(wait_ready(target, body))
                asyncio.run(measure(target.urls[0], clients, 2, "warm-up"))
            for r in range(rounds):
                runs["baseline"].add(asyncio.run(
                    measure(plain.urls[0], clients, seconds, "baseline")))
                attacker, log = procs.spawn(f"hostile-{r}", [
                    sys.executable, "-m", "bench.hostile", "--send-hostile", plain.urls[0],
                    "--hostile", str(hostile), "--seconds", str(seconds + 1.5),
                    "--hostile-rate", str(rate)])
                time.sleep(1.0)  # the attack under way
                runs["hostile-body"].add(asyncio.run(
                    measure(plain.urls[0], clients, seconds, "hostile-body")))
                attacker.wait(seconds + 150)
                runs["hostile-body"].notes.append(log.read_text().strip().splitlines()[-1])
                runs["black-hole-pod"].add(asyncio.run(
                    measure(holed.urls[0], clients, seconds, "black-hole-pod")))
            opened = [line.split(": ", 1)[-1] for line in holed.log.read_text().splitlines()
                      if "circuit of pod" in line and (" open: " in line or "open again" in line)]
            runs["black-hole-pod"].notes.append(
                f"the balancer's circuit of the black hole opened {len(opened)} times; first:"
                f" {opened[0][:120] if opened else '(never)'}")
        finally:
            procs.close()
    return list(runs.values())


def _wait(log: Path, marker: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while marker not in log.read_text():
        if time.monotonic() > end:
            raise RuntimeError(f"no {marker!r} in {log.name} within {timeout:g} s")
        time.sleep(0.05)


def report(runs: list[Run]) -> str:
    base = runs[0]
    out = [f"{'scenario':16} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p90 ms':>8} "
           f"{'p50/baseline by round':>30}"]
    for r in runs:
        w = r.pooled()
        ratios = [x.p(0.5) / b.p(0.5) for x, b in zip(r.windows, base.windows)]
        worst = max(ratios) if ratios else float("nan")
        mark = "" if r is base else ("  ok" if worst <= GOAL else f"  OVER {GOAL}x")
        shown = " ".join(f"{x:.2f}x" for x in ratios)
        out.append(f"{r.name:16} {len(w.latencies_ms):8d} {sum(w.errors.values()):6d} "
                   f"{w.p(0.5):8.1f} {w.p(0.9):8.1f} {shown:>30}{mark}")
        if w.errors:
            out.append(f"  errors: {w.errors}")
        out += [f"  {note}" for note in r.notes]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pods", type=int, default=3)
    p.add_argument("--clients", type=int, default=4, help="normal clients measured")
    p.add_argument("--hostile", type=int, default=2, help="hostile senders")
    p.add_argument("--hostile-rate", type=float, default=4.0,
                   help="hostile bodies started per second, all senders together")
    p.add_argument("--seconds", type=float, default=8.0, help="per scenario and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--time-scale", type=float, default=20.0,
                   help="simulated pods run this many times faster than an A10")
    p.add_argument("--send-hostile", metavar="URL", help=argparse.SUPPRESS)
    p.add_argument("--black-hole", type=int, metavar="PORT", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.send_hostile:
        os.nice(19)  # an attacker elsewhere: its own CPU is not the balancer's cost
        statuses = asyncio.run(send_hostile(a.send_hostile, a.hostile, a.seconds,
                                            a.hostile_rate))
        print(f"{sum(statuses.values())} bodies of ~8 MB sent: {statuses}", flush=True)
        return 0
    if a.black_hole:
        asyncio.run(serve_black_hole(a.black_hole))
        return 0
    print(report(run(a.pods, a.clients, a.hostile, a.seconds, a.time_scale, a.rounds,
                     a.hostile_rate)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
