"""What the balancer costs: pick latency of `Router.decide` and bare `policy.pick` at 10, 100
and 1000 pods, then the live proxy's req/s, CPU per request and added latency against going
direct and against vllm-router (round_robin and cache_aware), side by side on the same
simulated pods, non-streaming and streamed, at concurrency 1 and the --concurrency levels.

    python -m bench.balancer_overhead [--sizes 10,100,1000] [--picks 3000]
        [--policies llm,llm-python,round-robin] [--pods 4] [--requests 600]
        [--concurrency 16,64] [--duration 8] [--rounds 2] [--workers 1] [--skip-live]

Each program runs in its own process: the simulated pods (one child), each router (one at
a time, so an idle one never loads the pods) and the load client (this process); llmtraffic
runs with its default --workers (the cores available), and its CPU is that of all its
processes. A bare aiohttp round-robin proxy runs too, as the floor under any Python proxy.
The machine's load average is printed before and after. Figures are printed, never
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from llmtraffic.contracts.prompt import CHARS_PER_TOKEN, estimate_tokens
from llmtraffic.harness.child import stop_child
from llmtraffic.simulator.workloads import BASE_MODEL, SEED_ADAPTERS, filler_text

if TYPE_CHECKING:
    from llmtraffic.contracts.store import PodMetrics

POOL = "vllm-llama2-7b-pool"
POOL_LABELS = {"app": POOL}
HOST = "test.com"  # the seed LLMRoute's host
SEED_DIR = Path(__file__).resolve().parent.parent / "deploy" / "seed"
SEED_FILES = ("inferencepool.yaml", "inferencemodel.yaml", "llmroute.yaml")
ADAPTER_SHARE = 0.7  # pick-latency workload: share of requests for a LoRA adapter
PICK_GOAL_P50_US, PICK_GOAL_P99_US = 50.0, 200.0
#: Issue 21's goals for llmtraffic llm: added p50 at concurrency 1, req/s over vllm-router
#: round_robin's at each higher concurrency, CPU per request under load.
ADDED_P50_GOAL_MS, RPS_GOAL_RATIO = 0.5, 1.0
CPU_GOAL_MS = {"plain": 0.2, "stream": 0.4}

# ---- workload ------------------------------------------------------------------------------

class Prompts:
    """Prompts of about 1-2 KB: one of a few shared system prompts (~1 KB, so requests share
    prefixes as a real tenant's do) followed by a unique question of 100-900 characters."""

    def __init__(self, rng: random.Random, systems: int = 12) -> None:
        self.rng = rng
        self.systems = [f"System prompt {i}: you are a careful assistant. "
                        + filler_text(rng, rng.randint(800, 1100) // CHARS_PER_TOKEN) + "\n"
                        for i in range(systems)]

    def next(self) -> str:
        r = self.rng
        return (r.choice(self.systems) + f"User #{r.randrange(10**9)}: "
                + filler_text(r, r.randint(100, 900) // CHARS_PER_TOKEN) + "\nAssistant:")


def models_yaml() -> str:
    """InferenceModels for the base model and the seed's 10 adapters (the seed's own file
    only names tweet-summary), in the seed pool."""
    docs = []
    for name in (BASE_MODEL, *SEED_ADAPTERS):
        if name == "tweet-summary":
            continue  # the seed's InferenceModel (Critical) stays as written
        docs.append({"apiVersion": "inference.networking.x-k8s.io/v1alpha1",
                     "kind": "InferenceModel",
                     "metadata": {"name": "bench-" + name.replace("/", "-").lower()},
                     "spec": {"modelName": name, "criticality": "Standard",
                              "poolRef": {"group": "inference.networking.x-k8s.io",
                                          "kind": "InferencePool", "name": POOL},
                              "targetModels": [{"name": name, "weight": 100}]}})
    return yaml.safe_dump_all(docs, sort_keys=False)


def config_files(tmp: Path) -> list[str]:
    """The seed's InferencePool, InferenceModel and LLMRoute plus the bench's models."""
    extra = tmp / "bench-models.yaml"
    extra.write_text(models_yaml())
    return [str(SEED_DIR / f) for f in SEED_FILES] + [str(extra)]


def random_metrics(rng: random.Random) -> PodMetrics:
    """A busy Llama-2-7B pod as the seed runs it: up to 4 of the 10 adapters loaded."""
    from llmtraffic.contracts.store import PodMetrics
    running = tuple(rng.sample(SEED_ADAPTERS, rng.randint(0, 4)))
    others = [a for a in SEED_ADAPTERS if a not in running]
    waiting = tuple(rng.sample(others, rng.randint(0, 2))) if len(running) == 4 else ()
    return PodMetrics(running=float(rng.randint(0, 48)), waiting=float(rng.randint(0, 6)),
                      kv_usage=rng.uniform(0.05, 0.9), running_adapters=running,
                      waiting_adapters=waiting, max_lora=4, models=(BASE_MODEL,),
                      block_size=16, num_gpu_blocks=560)


# ---- part 1: pick latency ------------------------------------------------------------------

NOW = 1000.0  # the benchmark's store clock: every scrape is fresh


@dataclass
class PickRun:
    """One timed loop: `stage` is "decide" (Router.decide: snapshot + pick) or "pick"."""

    pods: int
    policy: str
    stage: str
    samples_ns: list[int]
    reasons: dict[str, int] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        s = sorted(self.samples_ns)
        return {"pods": self.pods, "policy": self.policy, "stage": self.stage,
                "picks": len(s), "p50_us": percentile(s, 0.50) / 1000,
                "p99_us": percentile(s, 0.99) / 1000, "mean_us": statistics.fmean(s) / 1000,
                "reasons": dict(self.reasons)}


class Fleet:
    """A store of N pool members with realistic metrics, churned between timed picks like
    the live balancer churns it: each pick is acquired, released a while later, and one
    pod in ten gets a fresh scrape."""

    def __init__(self, n: int, rng: random.Random) -> None:
        from llmtraffic.contracts.store import MetricsStore, Pod

        self.rng = rng
        self.store = MetricsStore()
        self.pods = [Pod(f"vllm-{i}", f"10.{i // 62500}.{i // 250 % 250}.{i % 250}:8000",
                         dict(POOL_LABELS), POOL) for i in range(n)]
        self.store.set_pods(self.pods)
        for p in self.pods:
            self.store.update(p.address, random_metrics(rng), NOW)
        self.inflight: deque[str] = deque()
        self.max_inflight = 4 * n
        self._next_scrape = 0

    def after_pick(self, address: str) -> None:
        self.store.acquire(address)
        self.inflight.append(address)
        if len(self.inflight) > self.max_inflight:
            self.store.release(self.inflight.popleft())
        if self.rng.random() < 0.1:
            pod = self.pods[self._next_scrape % len(self.pods)]
            self._next_scrape += 1
            self.store.update(pod.address, random_metrics(self.rng), NOW)


def _bodies(rng: random.Random, n: int) -> list[dict[str, Any]]:
    prompts = Prompts(rng)
    return [{"model": rng.choice(SEED_ADAPTERS) if rng.random() < ADAPTER_SHARE
             else BASE_MODEL, "prompt": prompts.next(), "max_tokens": 4} for _ in range(n)]


#: The llm policy on its pure-Python reference core (the fallback when the native core is
#: not built), timed beside the native one.
LLM_PYTHON = "llm-python"


def _policy(name: str, seed: int):
    from llmtraffic.balancer.policy.registry import make_policy

    if name == LLM_PYTHON:
        from llmtraffic.balancer.policy.llm import LLMPolicy
        return LLMPolicy(seed=seed, native=False)
    policy = make_policy(name, seed=seed)
    if getattr(policy, "native", True) is False:
        from llmtraffic.balancer.policy.native import missing
        raise SystemExit(f"the llm policy's native core is not built ({missing}); "
                         f"time the Python core alone with --policies {LLM_PYTHON}")
    return policy


def _time_decide(n_pods: int, policy_name: str, bodies: list[dict], warmup: int,
                 resources, seed: int) -> PickRun:
    from llmtraffic.balancer.router import Router

    fleet = Fleet(n_pods, random.Random(seed))
    router = Router(resources, fleet.store, _policy(policy_name, seed),
                    clock=lambda: NOW, seed=seed)
    run = PickRun(n_pods, policy_name, "decide", [])
    clock = time.perf_counter_ns
    for k, body in enumerate(bodies):
        t0 = clock()
        d = router.decide(HOST, body, False)
        took = clock() - t0
        fleet.after_pick(d.pick.address)
        if k >= warmup:
            run.samples_ns.append(took)
            run.reasons[d.pick.reason] = run.reasons.get(d.pick.reason, 0) + 1
    return run


def _time_pick(n_pods: int, policy_name: str, bodies: list[dict], warmup: int,
               resources, seed: int) -> PickRun:
    """The policy alone, on the snapshot and request Router.decide would hand it."""
    from llmtraffic.balancer.policy.request import LLMRequest, Pick
    from llmtraffic.contracts.store import Snapshot

    fleet = Fleet(n_pods, random.Random(seed))
    policy = _policy(policy_name, seed)
    crit = {m.model_name: m.criticality for m in resources.models_in(POOL)}
    run = PickRun(n_pods, policy_name, "pick", [])
    clock = time.perf_counter_ns
    for k, body in enumerate(bodies):
        model, text = body["model"], body["prompt"]
        request = LLMRequest(model=model, target_model=model,
                             adapter=None if model == BASE_MODEL else model, prompt=text,
                             prompt_tokens=estimate_tokens(text),
                             criticality=crit[model], pool=POOL)
        snap = fleet.store.snapshot(NOW)
        # as Router.decide hands it: with the store's health version, which lets a policy
        # keep what it derives from the usable pods (round-robin's ring) across picks
        members = Snapshot(snap.now, snap.in_pool(POOL), version=snap.version)
        t0 = clock()
        pick = policy.pick(request, members)
        took = clock() - t0
        assert isinstance(pick, Pick), pick
        fleet.after_pick(pick.address)
        if k >= warmup:
            run.samples_ns.append(took)
            run.reasons[pick.reason] = run.reasons.get(pick.reason, 0) + 1
    return run


def pick_latency(sizes: tuple[int, ...] = (10, 100, 1000), picks: int = 3000,
                 warmup: int = 300,
                 policies: tuple[str, ...] = ("llm", LLM_PYTHON, "round-robin"),
                 seed: int = 0) -> list[dict[str, Any]]:
    """Rows of {pods, policy, stage, picks, p50_us, p99_us, mean_us, reasons}."""
    from llmtraffic.balancer.config import load_resources

    with tempfile.TemporaryDirectory(prefix="balancer-overhead-") as tmp:
        resources = load_resources(config_files(Path(tmp)))
    bodies = _bodies(random.Random(seed), warmup + picks)
    rows = []
    for n in sizes:
        for name in policies:
            for timer in (_time_decide, _time_pick):
                rows.append(timer(n, name, bodies, warmup, resources, seed).row())
    return rows


def report_picks(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'pods':>5} {'policy':<12} {'stage':<7} {'picks':>6} {'p50 µs':>8} "
             f"{'p99 µs':>8} {'mean µs':>8}"]
    for r in rows:
        lines.append(f"{r['pods']:>5} {r['policy']:<12} {r['stage']:<7} {r['picks']:>6} "
                     f"{r['p50_us']:>8.1f} {r['p99_us']:>8.1f} {r['mean_us']:>8.1f}")
    for r in rows:
        if r["pods"] == 100 and r["policy"] == "llm":
            ok50, ok99 = r["p50_us"] <= PICK_GOAL_P50_US, r["p99_us"] <= PICK_GOAL_P99_US
            lines.append(
                f"goal llm {r['stage']} at 100 pods: median ≤ {PICK_GOAL_P50_US:.0f} µs: "
                f"{_met(ok50)} ({r['p50_us']:.1f} µs), p99 ≤ {PICK_GOAL_P99_US:.0f} µs: "
                f"{_met(ok99)} ({r['p99_us']:.1f} µs)")
    native = {(r["pods"], r["stage"]): r["p50_us"] for r in rows if r["policy"] == "llm"}
    for r in rows:
        ref = native.get((r["pods"], r["stage"]))
        if r["policy"] == LLM_PYTHON and ref:
            lines.append(f"llm {r['stage']} at {r['pods']} pods: the Python core's median is "
                         f"{r['p50_us'] / ref:.1f}x the native core's")
    return "\n".join(lines)


def _met(ok: bool) -> str:
    return "met" if ok else "missed"


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted `xs`."""
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


# ---- part 2: live overhead -----------------------------------------------------------------

def _pods_process(conn: Connection, pods: int, options: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    asyncio.run(_serve_pods(conn, pods, options))


async def _serve_pods(conn: Connection, pods: int, options: dict[str, Any]) -> None:
    """Start the fleet, send its URLs, serve until the parent says anything (or goes)."""
    from llmtraffic.simulator.server import SimFleet

    fleet = await SimFleet(pods, **options).start()
    conn.send(fleet.urls)
    with contextlib.suppress(EOFError, OSError):
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    await fleet.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of one process, all its threads (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class Target:
    """Somewhere the client sends requests: a router, or the pods themselves."""

    name: str
    urls: list[str]  # the client cycles over these
    proc: subprocess.Popen | None = None  # the router's process (its CPU is charged here)
    log: Path | None = None


class Processes:
    """The programs this benchmark starts; `stop()` ends one, `close()` every one, by id."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.popen: list[subprocess.Popen] = []
        self.children: list[multiprocessing.process.BaseProcess] = []
        self._pipes: list[Connection] = []

    def start_pods(self, pods: int, options: dict[str, Any], timeout: float = 60) -> \
            tuple[list[str], int]:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_pods_process, args=(child, pods, options), daemon=True,
                           name="sim-pods")
        proc.start()
        self.children.append(proc)
        self._pipes.append(parent)
        deadline = time.monotonic() + timeout
        while not parent.poll(0.2):
            if not proc.is_alive():
                raise RuntimeError(f"the simulated pods exited with {proc.exitcode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the simulated pods did not start within {timeout:g} s")
        return parent.recv(), proc.pid  # type: ignore[return-value]

    def spawn(self, name: str, argv: list[str]) -> tuple[subprocess.Popen, Path]:
        log = self.tmp / f"{name}.log"
        with open(log, "wb") as out:
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True,
                                 preexec_fn=_die_with_parent)
        self.popen.append(p)
        return p, log

    def stop(self, p: subprocess.Popen, timeout: float = 10) -> None:
        """SIGTERM the process's own session (it and anything it started), then SIGKILL."""
        stop_child(p, timeout, group=True)

    def close(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(OSError, ValueError):
                pipe.send("stop")
        for p in self.popen:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in self.popen:
            self.stop(p)
        for c in self.children:
            c.join(10)
            if c.is_alive():
                c.kill()
                c.join(5)
        for pipe in self._pipes:
            pipe.close()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if this benchmark dies without cleaning up."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _tail(log: Path | None, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log else ""
    except OSError:
        return "(no log)"


def _wait_for_line(proc: subprocess.Popen, log: Path, marker: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if marker in line:
                return line
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{_tail(log)}")
        time.sleep(0.05)
    raise RuntimeError(f"no {marker!r} within {timeout:g} s:\n{_tail(log)}")


@dataclass
class Setup:
    """What the routers are started with."""

    pod_urls: list[str]
    configs: list[str]  # resource YAML for llmtraffic
    pods_file: Path
    vllm_router: str | None  # executable
    scrape_interval: float | None = None  # llmtraffic --scrape-interval (None: its default)


def start_balancer(procs: Processes, setup: Setup, policy: str,
                   workers: int | None = None) -> Target:
    """`llmtraffic balancer` with `--workers` (None: its default, the cores available)."""
    argv = [sys.executable, "-m", "llmtraffic", "balancer", "--config", *setup.configs,
            "--pods-file", str(setup.pods_file), "--listen", "127.0.0.1:0", "--policy",
            policy, "--seed", "0"]
    if workers is not None:
        argv += ["--workers", str(workers)]
    if setup.scrape_interval is not None:
        argv += ["--scrape-interval", str(setup.scrape_interval)]
    name = f"llmtraffic {policy}" + ("" if workers is None else f" w{workers}")
    proc, log = procs.spawn(name.replace(" ", "-"), argv)
    line = _wait_for_line(proc, log, "llmtraffic balancer: http://", 60)
    url = line.split("llmtraffic balancer: ", 1)[1].split()[0]
    return Target(name, [url], proc, log)


#: vllm-router's policies measured, by the short name the tables show.
VLLM_ROUTER_POLICIES = {"rr": "round_robin", "cache_aware": "cache_aware"}


def start_vllm_router(procs: Processes, setup: Setup, policy: str = "rr") -> Target:
    """`vllm-router --policy round_robin|cache_aware` on the same pods; ready once it
    answers (it health-checks every worker first)."""
    assert setup.vllm_router
    port = _free_port()
    argv = [setup.vllm_router, "--worker-urls", *setup.pod_urls, "--policy",
            VLLM_ROUTER_POLICIES[policy], "--host", "127.0.0.1", "--port", str(port),
            # its metrics listener on a free port too: at its fixed default (29000) a second
            # vllm-router on the machine cannot start
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(_free_port())]
    proc, log = procs.spawn(f"vllm-router-{policy}", argv)
    return Target(f"vllm-router {policy}", [f"http://127.0.0.1:{port}"], proc, log)


FLOOR = "bare aiohttp proxy"  # reference: the least any aiohttp proxy costs


async def _serve_bare_proxy(port: int, pods: list[str]) -> None:
    """A round-robin reverse proxy with nothing else (no parsing, routing, logging or
    metrics): the floor under any Python aiohttp proxy, llmtraffic's included (on the same
    event loop as `llmtraffic balancer`'s default). Streams are relayed as they arrive."""
    import itertools

    import aiohttp
    from aiohttp import web

    ring = itertools.cycle(pods)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                    auto_decompress=False)

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with session.post(f"http://{next(ring)}{request.path}", data=body,
                                headers={"Content-Type": "application/json"}) as up:
            if up.content_type != "text/event-stream":
                return web.Response(status=up.status, body=await up.read(),
                                    content_type=up.content_type)
            resp = web.StreamResponse(status=up.status,
                                      headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            async for data in up.content.iter_any():
                await resp.write(data)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.router.add_post("/v1/completions", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"bare proxy: http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


def start_floor(procs: Processes, setup: Setup) -> Target:
    port = _free_port()
    argv = [sys.executable, "-m", "bench.balancer_overhead", "--serve-bare-proxy", str(port),
            *(u.removeprefix("http://") for u in setup.pod_urls)]
    proc, log = procs.spawn("bare-proxy", argv)
    _wait_for_line(proc, log, "bare proxy: http://", 60)
    return Target(FLOOR, [f"http://127.0.0.1:{port}"], proc, log)


def _start(procs: Processes, setup: Setup, name: str) -> Target:
    """A target by its table name: FLOOR, "vllm-router rr|cache_aware", or
    "llmtraffic POLICY" (default workers) / "llmtraffic POLICY wN"."""
    if name == FLOOR:
        return start_floor(procs, setup)
    kind, policy, *rest = name.split()
    if kind == "vllm-router":
        return start_vllm_router(procs, setup, policy)
    return start_balancer(procs, setup, policy, int(rest[0][1:]) if rest else None)


@dataclass
class LoadCounts:
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    usage_tokens: int = 0  # completion tokens of the non-streamed answers
    events: int = 0  # data events (before [DONE]) of the streamed answers
    latencies: list[float] = field(default_factory=list)  # ms, of the successful requests

    def error(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1


async def _request(session, url: str, body: bytes, counts: LoadCounts,
                   stream: bool = False) -> bool:
    """One completion, read whole (a stream up to `[DONE]`); its latency into `counts`."""
    import aiohttp
    import orjson

    t0 = time.perf_counter()
    try:
        async with session.post(f"{url}/v1/completions", data=body,
                                headers={"Host": HOST,
                                         "Content-Type": "application/json"}) as r:
            if not stream or r.status != 200:
                data = await r.read()
            if r.status != 200:
                counts.error(f"http {r.status}")
                return False
            if stream:
                events, done = 0, False
                async for line in r.content:
                    if line.startswith(b"data: [DONE]"):
                        done = True
                    elif line.startswith(b"data:"):
                        events += 1
                if not done:
                    counts.error("stream without [DONE]")
                    return False
                counts.events += events
            else:
                counts.usage_tokens += orjson.loads(data)["usage"]["completion_tokens"]
            counts.ok += 1
            counts.latencies.append((time.perf_counter() - t0) * 1000)
            return True
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        counts.error(type(e).__name__)
        return False


#: The two request shapes measured: a short answer, and a stream of STREAM_TOKENS events.
MODES = ("plain", "stream")
STREAM_TOKENS = 20


def _payloads(seed: int, n: int, max_tokens: int, stream: bool = False) -> list[bytes]:
    """Completions for the base model with the pick-latency prompts: `max_tokens` each, or
    STREAM_TOKENS streamed (one event per token, as the simulated pods send them)."""
    import orjson

    prompts = Prompts(random.Random(seed))
    return [orjson.dumps({"model": BASE_MODEL, "prompt": prompts.next(),
                          "max_tokens": STREAM_TOKENS if stream else max_tokens,
                          "ignore_eos": True, **({"stream": True} if stream else {})})
            for _ in range(n)]


async def wait_ready(target: Target, payload: bytes, timeout: float = 60) -> None:
    """Until one completion through `target` succeeds."""
    import aiohttp

    deadline = time.monotonic() + timeout
    last = ""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while time.monotonic() < deadline:
            counts = LoadCounts()
            if await _request(session, target.urls[0], payload, counts):
                return
            last = str(counts.errors)
            if target.proc is not None and target.proc.poll() is not None:
                break
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{target.name} did not answer within {timeout:g} s (last: {last})\n"
                       f"{_tail(target.log)}")


@dataclass
class Latencies:
    """Sequential request latencies (ms) through a router and, paired, direct; the
    router's CPU seconds over its routed requests."""

    routed: list[float] = field(default_factory=list)
    direct: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    router_cpu_s: float = 0.0


def _tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its children (the balancer's workers), all their threads."""
    total = _cpu_seconds(pid)
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _tree_cpu_seconds(int(child))
    except OSError:
        pass
    return total


async def paired_latency(target: Target, direct: Target, requests: int, warmup: int,
                         payloads: list[bytes], into: Latencies, stream: bool = False
                         ) -> None:
    """One request at a time, alternating direct and through `target` (who goes first
    alternates too), so drift in the machine's load falls on both alike."""
    import aiohttp

    counts = {"routed": LoadCounts(), "direct": LoadCounts()}
    pid = target.proc.pid if target.proc else None
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                     timeout=aiohttp.ClientTimeout(total=30)) as s_routed, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                  timeout=aiohttp.ClientTimeout(total=30)) as s_direct:
        legs = [("routed", s_routed, target), ("direct", s_direct, direct)]
        for i in range(warmup + requests):
            if i == warmup and pid is not None:
                cpu0 = _tree_cpu_seconds(pid)
            body = payloads[i % len(payloads)]
            for kind, session, t in (legs if i % 2 else legs[::-1]):
                c = counts[kind]
                if await _request(session, t.urls[i % len(t.urls)], body, c, stream) \
                        and i >= warmup:
                    getattr(into, kind).append(c.latencies[-1])
        if pid is not None:
            into.router_cpu_s += _tree_cpu_seconds(pid) - cpu0
    for c in counts.values():
        for k, v in c.errors.items():
            into.errors[k] = into.errors.get(k, 0) + v


async def throughput(target: Target, concurrency: int, duration: float,
                     payloads: list[bytes], pids: dict[str, int],
                     stream: bool = False) -> dict[str, Any]:
    """Closed loop: `concurrency` workers send back to back for `duration` s (the last
    requests finish after it; the wall time includes them). CPU% per process in `pids`
    (a router's with its children, e.g. the balancer's workers)."""
    import aiohttp

    counts = LoadCounts()
    started = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def worker(k: int) -> None:
            nonlocal started
            i = k
            while time.monotonic() < deadline:
                started += 1
                await _request(session, target.urls[i % len(target.urls)],
                               payloads[i % len(payloads)], counts, stream)
                i += concurrency

        cpu0 = {name: _tree_cpu_seconds(pid) for name, pid in pids.items()}
        t0 = time.monotonic()
        deadline = t0 + duration
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        wall = time.monotonic() - t0
        cpu = {name: (_tree_cpu_seconds(pid) - cpu0[name]) / wall * 100
               for name, pid in pids.items()}
    lat = sorted(counts.latencies)
    return {"target": target.name, "concurrency": concurrency, "stream": stream,
            "requests": counts.ok, "started": started, "errors": counts.errors,
            "usage_tokens": counts.usage_tokens, "events": counts.events, "wall_s": wall,
            "rps": counts.ok / wall, "cpu_pct": cpu,
            "p50_ms": _p(lat, 0.5), "p99_ms": _p(lat, 0.99)}


async def _router_turn(target: Target, direct: Target, requests: int, warmup: int,
                       concurrencies: tuple[int, ...], duration: float,
                       payloads: dict[str, list[bytes]], pids: dict[str, int],
                       lat: dict[str, Latencies]) -> dict[str, list[dict[str, Any]]]:
    """Both modes through one started router: paired latency (concurrency 1), then
    closed-loop throughput at each concurrency."""
    out: dict[str, list[dict[str, Any]]] = {}
    router = {**pids, "router": target.proc.pid} if target.proc else pids
    for mode in MODES:
        stream = mode == "stream"
        await wait_ready(target, payloads["plain"][0])
        await paired_latency(target, direct, requests, warmup, payloads[mode], lat[mode],
                             stream)
        out[mode] = [await throughput(target, c, duration, payloads[mode], router, stream)
                     for c in concurrencies]
    return out


def live_overhead(pods: int = 4, requests: int = 600, warmup: int = 50,
                  concurrencies: tuple[int, ...] = (16, 64), duration: float = 8.0,
                  rounds: int = 2, max_tokens: int = 2, time_scale: float = 1000.0,
                  seed: int = 0, policies: tuple[str, ...] = ("round-robin", "llm"),
                  vllm_router: str | None = None,
                  scrape_interval: float | None = None, floor: bool = True,
                  workers: tuple[int, ...] = ()) -> dict[str, Any]:
    """Pods in a child process; each round, direct req/s, then each router in turn (order
    rotating by round) started in its own process, measured in both modes (plain and
    streamed), stopped, so an idle router never loads the pods while another is measured.
    Sequential latency (concurrency 1) is paired with direct requests per router;
    `requests` is split over the rounds. llmtraffic runs with its default --workers (the
    cores available) and, for each N in `workers`, with --workers N too."""
    exe = vllm_router or shutil.which("vllm-router")
    names = ([f"vllm-router {p}" for p in VLLM_ROUTER_POLICIES] if exe else []) \
        + [f"llmtraffic {p}" for p in policies] \
        + [f"llmtraffic {p} w{n}" for p in policies for n in workers] \
        + ([FLOOR] if floor else [])
    lat = {n: {mode: Latencies() for mode in MODES} for n in names}
    runs: dict[str, dict[str, list[list[dict[str, Any]]]]] = {
        n: {mode: [] for mode in MODES} for n in ["direct", *names]}
    per_round = max(1, math.ceil(requests / max(1, rounds)))
    with tempfile.TemporaryDirectory(prefix="balancer-overhead-") as tmpdir:
        tmp = Path(tmpdir)
        procs = Processes(tmp)
        try:
            pod_urls, pods_pid = procs.start_pods(pods, {"time_scale": time_scale,
                                                         "seed": seed,
                                                         "lora_modules": _seed_loras()})
            pods_file = tmp / "pods.yaml"
            pods_file.write_text(yaml.safe_dump({"pods": [
                {"name": f"sim-{i}", "address": u.removeprefix("http://"),
                 "labels": dict(POOL_LABELS)} for i, u in enumerate(pod_urls)]}))
            setup = Setup(pod_urls, config_files(tmp), pods_file, exe, scrape_interval)
            payloads = {mode: _payloads(seed, 512, max_tokens, mode == "stream")
                        for mode in MODES}
            direct = Target("direct", pod_urls)
            pids = {"pods": pods_pid, "client": os.getpid()}
            asyncio.run(wait_ready(direct, payloads["plain"][0]))
            for r in range(rounds):
                for mode in MODES:
                    runs["direct"][mode].append([asyncio.run(throughput(
                        direct, c, duration, payloads[mode], pids, mode == "stream"))
                        for c in concurrencies])
                for name in names[r % len(names):] + names[:r % len(names)]:
                    target = _start(procs, setup, name)
                    try:
                        turn = asyncio.run(_router_turn(
                            target, direct, per_round, warmup, concurrencies, duration,
                            payloads, pids, lat[name]))
                    finally:
                        assert target.proc is not None
                        procs.stop(target.proc)
                    for mode in MODES:
                        runs[name][mode].append(turn[mode])
        finally:
            procs.close()
    return {"pods": pods, "concurrencies": concurrencies, "duration_s": duration,
            "rounds": rounds, "max_tokens": max_tokens, "stream_tokens": STREAM_TOKENS,
            "time_scale": time_scale, "scrape_interval": scrape_interval,
            "targets": ["direct", *names], "latency": lat, "throughput": runs}


def _seed_loras() -> dict[str, str]:
    return {a: f"/adapters/{a}" for a in SEED_ADAPTERS}


def _p(xs: list[float], q: float) -> float:
    return percentile(sorted(xs), q) if xs else math.nan


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.fmean(xs) if xs else math.nan


def summarize(result: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """(target, mode, concurrency) -> req/s (mean over rounds), router CPU ms per request,
    latency p50/p99 and added p50/p99 over going direct: at concurrency 1 from the
    paired sequential requests, above it from the closed loop at that concurrency."""
    out: dict[tuple[str, str, int], dict[str, Any]] = {}
    for mode in MODES:
        base_direct = [x for lt in result["latency"].values() for x in lt[mode].direct]
        for name in result["targets"]:
            rounds = result["throughput"][name][mode]
            if name == "direct":
                samples, base, cpu_ms = base_direct, base_direct, math.nan
            else:
                lt = result["latency"][name][mode]
                samples, base = lt.routed, lt.direct
                cpu_ms = lt.router_cpu_s * 1000 / len(samples) if samples else math.nan
            errors: dict[str, int] = {}
            if name != "direct":
                errors.update(result["latency"][name][mode].errors)
            row1 = {"rps": 1000 / _mean(samples) if samples else math.nan,
                    "rps_runs": [], "cpu_ms": cpu_ms, "p50_ms": _p(samples, 0.5),
                    "p99_ms": _p(samples, 0.99),
                    "added_p50_ms": _p(samples, 0.5) - _p(base, 0.5),
                    "added_p99_ms": _p(samples, 0.99) - _p(base, 0.99), "errors": errors,
                    "requests": len(samples), "events": math.nan}
            out[(name, mode, 1)] = row1
            for k, c in enumerate(result["concurrencies"]):
                runs = [rnd[k] for rnd in rounds]
                d_runs = [rnd[k] for rnd in result["throughput"]["direct"][mode]]
                errs: dict[str, int] = {}
                for r in runs:
                    for e, v in r["errors"].items():
                        errs[e] = errs.get(e, 0) + v
                rps = _mean([r["rps"] for r in runs])
                router = _mean([r["cpu_pct"].get("router", math.nan) for r in runs])
                p50, p99 = _mean([r["p50_ms"] for r in runs]), _mean([r["p99_ms"] for r in runs])
                requests = sum(r["requests"] for r in runs)
                out[(name, mode, c)] = {
                    "rps": rps, "rps_runs": [r["rps"] for r in runs],
                    "cpu_ms": router * 10 / rps if rps else math.nan,
                    "p50_ms": p50, "p99_ms": p99,
                    "added_p50_ms": p50 - _mean([r["p50_ms"] for r in d_runs]),
                    "added_p99_ms": p99 - _mean([r["p99_ms"] for r in d_runs]),
                    "errors": errs, "requests": requests,
                    "events": sum(r["events"] for r in runs) / requests if requests
                    else math.nan,
                    "pods_cpu_pct": _mean([r["cpu_pct"]["pods"] for r in runs]),
                    "client_cpu_pct": _mean([r["cpu_pct"]["client"] for r in runs])}
    return out


def _span(xs: list[float]) -> str:
    return f"{min(xs):.0f}-{max(xs):.0f}" if len(xs) > 1 else ""


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.3f}"


def report_live(result: dict[str, Any]) -> str:
    s = summarize(result)
    scrape = result["scrape_interval"]
    concs = (1, *result["concurrencies"])
    lines = [f"{result['pods']} simulated pods (time scale {result['time_scale']:g}); plain = "
             f"max_tokens {result['max_tokens']} non-streaming, stream = "
             f"{result['stream_tokens']} tokens streamed; ~1-2 KB prompts; llmtraffic scrape "
             f"interval {'default' if scrape is None else f'{scrape:g} s'}, --workers "
             "default unless named wN",
             "concurrency 1: sequential requests, each paired with a direct one (+ = router "
             "minus direct); above: closed loop for "
             f"{result['duration_s']:g} s, mean of {result['rounds']} round(s), + = minus "
             "direct at that concurrency; CPU/req = the router's processes' CPU per request",
             f"{'mode':<6} {'conc':>4} {'target':<26} {'req/s':>7} {'(rounds)':>11} "
             f"{'CPU/req ms':>10} {'p50 ms':>7} {'p99 ms':>7} {'+p50 ms':>8} {'+p99 ms':>8}"
             f"  errors"]
    for mode in MODES:
        for c in concs:
            for name in result["targets"]:
                r = s[(name, mode, c)]
                lines.append(
                    f"{mode:<6} {c:>4} {name:<26} {r['rps']:>7.0f} {_span(r['rps_runs']):>11} "
                    f"{_ms(r['cpu_ms']):>10} {_ms(r['p50_ms']):>7} {_ms(r['p99_ms']):>7} "
                    f"{_ms(r['added_p50_ms']) if name != 'direct' else '':>8} "
                    f"{_ms(r['added_p99_ms']) if name != 'direct' else '':>8}"
                    f"  {r['errors'] or 'none'}")
    lines += goals(s, result)
    return "\n".join(lines)


def goals(s: dict[tuple[str, str, int], dict[str, Any]], result: dict[str, Any]
          ) -> list[str]:
    """The issue's goals, met or missed, for llmtraffic llm (default workers)."""
    out = []
    llm = "llmtraffic llm"
    if llm not in result["targets"]:
        return out
    for mode in MODES:
        added = s[(llm, mode, 1)]["added_p50_ms"]
        out.append(f"goal {llm} {mode}: added p50 ≤ {ADDED_P50_GOAL_MS:g} ms at concurrency "
                   f"1: {_met(added <= ADDED_P50_GOAL_MS)} ({added:.3f} ms)")
        for c in result["concurrencies"]:
            peer = s.get(("vllm-router rr", mode, c))
            r = s[(llm, mode, c)]
            if peer is None or not peer["rps"]:
                out.append(f"goal {llm} {mode}: req/s ≥ {RPS_GOAL_RATIO:g}x vllm-router rr "
                           f"at concurrency {c}: not measured (no vllm-router on PATH)")
                continue
            ratio = r["rps"] / peer["rps"]
            out.append(f"goal {llm} {mode}: req/s ≥ {RPS_GOAL_RATIO:g}x vllm-router rr at "
                       f"concurrency {c}: {_met(ratio >= RPS_GOAL_RATIO)} ({ratio:.2f}x: "
                       f"{r['rps']:.0f} vs {peer['rps']:.0f})")
        cpu = min((s[(llm, mode, c)]["cpu_ms"] for c in result["concurrencies"]),
                  default=math.nan)
        goal = CPU_GOAL_MS[mode]
        out.append(f"goal {llm} {mode}: CPU ≤ {goal:g} ms per request under load: "
                   f"{_met(cpu <= goal)} ({cpu:.3f} ms, the least over concurrencies "
                   f"{', '.join(map(str, result['concurrencies']))})")
    return out


# ---- command line --------------------------------------------------------------------------

def _ints(value: str) -> tuple[int, ...]:
    return tuple(int(v) for v in value.split(",") if v.strip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.balancer_overhead", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=_ints, default=(10, 100, 1000),
                    help="pod counts for pick latency (default: 10,100,1000)")
    ap.add_argument("--picks", type=int, default=3000, help="timed picks per row")
    ap.add_argument("--policies", type=lambda v: tuple(v.split(",")),
                    default=("llm", LLM_PYTHON, "round-robin"),
                    help=f"policies to time picks of (default: llm,{LLM_PYTHON},round-robin; "
                    f"{LLM_PYTHON} is the llm policy on its pure-Python core)")
    ap.add_argument("--skip-picks", action="store_true", help="only the live part")
    ap.add_argument("--skip-live", action="store_true", help="only pick latency")
    ap.add_argument("--pods", type=int, default=4, help="live: simulated pods")
    ap.add_argument("--requests", type=int, default=600,
                    help="live: sequential requests per router (each paired with a direct "
                    "one)")
    ap.add_argument("--concurrency", type=_ints, default=(16, 64),
                    help="live: closed-loop workers, one run each (default: 16,64); "
                    "concurrency 1 is always measured, paired with direct requests")
    ap.add_argument("--duration", type=float, default=8.0,
                    help="live: seconds of load per target per round")
    ap.add_argument("--workers", type=_ints, default=(),
                    help="live: llmtraffic also with --workers N for each N given (e.g. 1); "
                    "it always runs with its default, the cores available")
    ap.add_argument("--rounds", type=int, default=2,
                    help="live: throughput rounds (target order rotates each round)")
    ap.add_argument("--max-tokens", type=int, default=2)
    ap.add_argument("--time-scale", type=float, default=1000.0,
                    help="simulator speed-up, so the pods cost little but CPU")
    ap.add_argument("--scrape-interval", type=float, default=None,
                    help="live: llmtraffic's --scrape-interval (default: the balancer's)")
    ap.add_argument("--vllm-router", default=None,
                    help="vllm-router executable (default: from PATH)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-floor", action="store_true",
                    help=f"live: skip the reference {FLOOR!r}")
    ap.add_argument("--serve-bare-proxy", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_bare_proxy:  # the reference proxy's own process (see start_floor)
        port, *pods = args.serve_bare_proxy
        from llmtraffic.balancer.eventloop import run as run_loop

        run_loop(_serve_bare_proxy(int(port), pods), "auto")
        return 0
    # SIGTERM unwinds like Ctrl-C, so every started process is stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; every process this benchmark started is stopped",
              file=sys.stderr)
        return 130


def _load() -> str:
    """The machine's load average: other work on the 2 cores inflates every figure."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def _run(args: argparse.Namespace) -> int:
    if not args.skip_picks:
        print("# pick latency (Router.decide = snapshot + pick; pick = policy.pick alone)",
              flush=True)
        print(report_picks(pick_latency(args.sizes, args.picks, policies=args.policies,
                                        seed=args.seed)))
        print(_load(), flush=True)
    if not args.skip_live:
        print("\n# live proxy overhead", flush=True)
        print(_load(), flush=True)
        r = live_overhead(args.pods, args.requests, 50, args.concurrency, args.duration,
                          args.rounds, args.max_tokens, args.time_scale, args.seed,
                          vllm_router=args.vllm_router,
                          scrape_interval=args.scrape_interval, floor=not args.no_floor,
                          workers=args.workers)
        print(report_live(r))
        print(_load())
    return 0


if __name__ == "__main__":
    sys.exit(main())
