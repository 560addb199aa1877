"""Soak: N minutes of the seed-lora workload at 90% of the fleet's capacity through
`llmtraffic balancer` (access log on) with `llmtraffic exporter` tailing that log and
scraping the pods, all child processes; samples RSS and open fds of the balancer and the
exporter every few seconds and reports start/end/peak, growth after warm-up (goal: RSS
< 10%, fds flat), requests ok/failed, and whether the exporter's token sums match the
balancer's. A benchmark: it prints figures, nothing asserts; not run in CI.

    python -m bench.soak [--minutes 10] [--load 0.9] [--pods 4] [--time-scale 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from llmtraffic.harness.loadclient import Outcome, replay
from llmtraffic.harness.routing import measure_capacity
from llmtraffic.harness.stack import Proc, Stack, start_balancer, start_exporter, start_fleet
from llmtraffic.simulator.workloads import make_workload

GOAL_RSS_GROWTH_PCT = 10.0
POOL = "soak-pool"


@dataclass(slots=True)
class Sample:
    t: float  # seconds since the load started
    rss_mb: float
    fds: int


@dataclass
class Series:
    """Samples of one process."""

    name: str
    samples: list[Sample] = field(default_factory=list)

    def summary(self, warmup_s: float) -> dict:
        s = self.samples
        if not s:
            return {"name": self.name, "samples": 0}
        warm = [x for x in s if x.t >= warmup_s] or s[-1:]
        base = warm[0]
        return {
            "name": self.name, "samples": len(s),
            "rss_start_mb": s[0].rss_mb, "rss_after_warmup_mb": base.rss_mb,
            "rss_end_mb": s[-1].rss_mb, "rss_peak_mb": max(x.rss_mb for x in s),
            "rss_growth_pct": growth_pct(base.rss_mb, s[-1].rss_mb),
            "fds_start": s[0].fds, "fds_after_warmup": base.fds, "fds_end": s[-1].fds,
            "fds_peak": max(x.fds for x in s), "fds_min_after_warmup": min(x.fds for x in warm),
        }


def growth_pct(before: float, after: float) -> float:
    return 100.0 * (after - before) / before if before > 0 else float("nan")


def rss_mb(pid: int) -> float:
    """VmRSS of a process in MB (Linux /proc), 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def sample(proc: Proc, series: Series, t: float) -> None:
    assert proc.popen is not None
    series.samples.append(Sample(round(t, 1), round(rss_mb(proc.popen.pid), 2),
                                 open_fds(proc.popen.pid)))


def sample_sum(text: str, name: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name)


def metric_sum(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        return sample_sum(r.read().decode(), name)


async def _drive(url: str, reqs, time_scale: float, procs: dict[str, Proc],
                 every: float, series: dict[str, Series], progress: dict,
                 traffic: list[tuple[float, float, int]]) -> list[Outcome]:
    """Replay `reqs`; every `every` seconds sample the processes and the balancer's
    in-flight count into `traffic` as (t, in flight, requests finished)."""
    t0 = time.monotonic()

    def done(o: Outcome) -> None:
        progress["ok" if o.ok else "failed"] += 1

    async def sampler(http: aiohttp.ClientSession) -> None:
        while True:
            t = time.monotonic() - t0
            for name, proc in procs.items():
                sample(proc, series[name], t)
            try:
                async with http.get(url + "/metrics") as r:
                    inflight = sample_sum(await r.text(),
                                          "llmtraffic_balancer_inflight_requests")
            except (aiohttp.ClientError, asyncio.TimeoutError):
                inflight = float("nan")
            finished = progress["ok"] + progress["failed"]
            traffic.append((round(t, 1), inflight, finished))
            b, e = series["balancer"].samples[-1], series["exporter"].samples[-1]
            print(f"t={t:7.1f}s  balancer rss={b.rss_mb:7.1f} MB fds={b.fds:4d}  "
                  f"exporter rss={e.rss_mb:7.1f} MB fds={e.fds:4d}  in flight "
                  f"{inflight:4.0f}  ok={progress['ok']} failed={progress['failed']}",
                  flush=True)
            await asyncio.sleep(every)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        task = asyncio.create_task(sampler(http))
        try:
            return await replay(url, reqs, time_scale=time_scale, host=None, on_done=done)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        t = time.monotonic() - t0
        for name, proc in procs.items():
            sample(proc, series[name], t)


def run(minutes: float, load: float = 0.9, pods: int = 4, time_scale: float = 1.0,
        seed: int = 1, workload: str = "seed-lora", every: float = 5.0,
        warmup_s: float | None = None, workdir: Path | None = None,
        policy: str = "llm") -> dict:
    duration = minutes * 60.0
    capacity = pods * measure_capacity(workload, seed=seed)
    rate = load * capacity
    reqs = make_workload(workload, rate, duration * time_scale, seed)
    warmup = warmup_s if warmup_s is not None else min(60.0, duration / 5)
    print(f"soak: {workload} at {load:.0%} of {capacity:.2f} req/s ({len(reqs)} requests over "
          f"{duration:.0f} s, {pods} pods, time scale {time_scale:g}); warm-up {warmup:.0f} s",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = workdir or Path(tmp)
        with Stack(root) as stack:
            fleet = start_fleet(stack, "pods", pods, POOL, time_scale=time_scale, seed=seed)
            access = root / "access.log"
            url = start_balancer(stack, "balancer", fleet, policy, access_log=access)
            balancer = stack.procs[-1]
            exporter_url = start_exporter(stack, [access], [fleet], root / "enriched.log")
            exporter = stack.procs[-1]
            procs = {"balancer": balancer, "exporter": exporter}
            series = {name: Series(name) for name in procs}
            progress = {"ok": 0, "failed": 0}
            traffic: list[tuple[float, float, int]] = []
            t0 = time.monotonic()
            outcomes = asyncio.run(_drive(url, reqs, time_scale, procs, every, series,
                                          progress, traffic))
            elapsed = time.monotonic() - t0
            tokens = _token_sums(url, exporter_url)
            cpu = {"balancer_cpu_s": balancer.cpu_seconds(),
                   "exporter_cpu_s": exporter.cpu_seconds(),
                   "pods_cpu_s": fleet.proc.cpu_seconds()}
    errors = sorted({o.error for o in outcomes if o.error})[:3]
    return {**_load_figures(traffic, warmup, duration), "policy": policy,
            "workload": workload, "minutes": minutes, "load": load, "pods": pods,
            "time_scale": time_scale, "capacity_rps": capacity, "rate_rps": rate,
            "elapsed_s": elapsed, "warmup_s": warmup, "requests": len(outcomes),
            "ok": sum(o.ok for o in outcomes), "failed": sum(not o.ok for o in outcomes),
            "errors": errors, **tokens, **cpu,
            "processes": {n: s.summary(warmup) for n, s in series.items()},
            "samples": {n: [(x.t, x.rss_mb, x.fds) for x in s.samples]
                        for n, s in series.items()}}


def _load_figures(traffic: list[tuple[float, float, int]], warmup: float,
                  duration: float) -> dict:
    """In flight at the balancer after warm-up and when arrivals end, and the rate requests
    finished in between: a fleet keeping up holds in-flight flat and finishes at the
    offered rate; memory then grows only by what leaks."""
    during = [x for x in traffic if warmup <= x[0] <= duration] or traffic[-1:] \
        or [(0.0, 0.0, 0)]
    first, last = during[0], during[-1]
    span = last[0] - first[0]
    return {"inflight_after_warmup": first[1], "inflight_end_of_arrivals": last[1],
            "inflight_peak": max((x[1] for x in traffic), default=0.0),
            "finished_rps": (last[2] - first[2]) / span if span > 0 else float("nan")}


def _token_sums(balancer_url: str, exporter_url: str, wait: float = 15.0) -> dict:
    """Completion tokens by the balancer's own count and by the exporter reading its access
    log (given a few seconds to catch up)."""
    name_b = "llmtraffic_balancer_completion_tokens_total"
    name_e = "asm_llm_proxy_completion_tokens_total"
    b = metric_sum(balancer_url, name_b)
    deadline = time.monotonic() + wait
    e = metric_sum(exporter_url, name_e)
    while e != b and time.monotonic() < deadline:
        time.sleep(0.5)
        e = metric_sum(exporter_url, name_e)
    return {"balancer_completion_tokens": b, "exporter_completion_tokens": e}


def report(r: dict) -> str:
    rows = [f"soak: {r['workload']} {r['minutes']:g} min at {r['load']:.0%} load, policy "
            f"{r.get('policy', 'llm')} "
            f"({r['rate_rps']:.2f} req/s of {r['capacity_rps']:.2f}), {r['pods']} pods, "
            f"time scale {r['time_scale']:g}; {r['elapsed_s']:.0f} s wall, warm-up "
            f"{r['warmup_s']:.0f} s",
            f"requests: {r['requests']} sent, {r['ok']} ok, {r['failed']} failed"
            + (f" (e.g. {r['errors']})" if r["errors"] else ""),
            f"in flight at the balancer: {r['inflight_after_warmup']:.0f} after warm-up, "
            f"{r['inflight_end_of_arrivals']:.0f} when arrivals ended (peak "
            f"{r['inflight_peak']:.0f}); finished {r['finished_rps']:.2f} req/s of "
            f"{r['rate_rps'] * r['time_scale']:.2f} offered"
            + (" (the fleet fell behind: memory follows the backlog)"
               if r["inflight_end_of_arrivals"] > 1.5 * max(1.0, r["inflight_after_warmup"])
               else ""),
            f"completion tokens: balancer {r['balancer_completion_tokens']:.0f}, exporter "
            f"{r['exporter_completion_tokens']:.0f} ("
            + ("equal" if r["balancer_completion_tokens"] == r["exporter_completion_tokens"]
               else "DIFFER") + ")",
            f"CPU seconds: balancer {r['balancer_cpu_s']:.1f}, exporter "
            f"{r['exporter_cpu_s']:.1f}, pods {r['pods_cpu_s']:.1f}",
            f"{'process':<10}{'RSS start':>11}{'after warm-up':>15}{'end':>9}{'peak':>9}"
            f"{'growth':>9}{'fds start':>11}{'warm':>6}{'end':>6}{'peak':>6}"]
    for p in r["processes"].values():
        if not p.get("samples"):
            continue
        rows.append(f"{p['name']:<10}{p['rss_start_mb']:>8.1f} MB{p['rss_after_warmup_mb']:>12.1f}"
                    f" MB{p['rss_end_mb']:>6.1f} MB{p['rss_peak_mb']:>6.1f} MB"
                    f"{p['rss_growth_pct']:>8.1f}%{p['fds_start']:>11d}"
                    f"{p['fds_after_warmup']:>6d}{p['fds_end']:>6d}{p['fds_peak']:>6d}")
    for p in r["processes"].values():
        if not p.get("samples"):
            continue
        ok = p["rss_growth_pct"] < GOAL_RSS_GROWTH_PCT
        rows.append(f"goal: {p['name']} RSS growth after warm-up < {GOAL_RSS_GROWTH_PCT:.0f}%: "
                    f"{'met' if ok else 'missed'} ({p['rss_growth_pct']:+.1f}%); fds "
                    f"{p['fds_after_warmup']} -> {p['fds_end']} (peak {p['fds_peak']})")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0,
                    help="wall minutes of load (default: %(default)s)")
    ap.add_argument("--load", type=float, default=0.9,
                    help="offered load as a fraction of the fleet's capacity measured in "
                    "virtual time (default: %(default)s)")
    ap.add_argument("--pods", type=int, default=4, help="simulated pods (default: %(default)s)")
    ap.add_argument("--time-scale", type=float, default=1.0,
                    help="pods run this many times faster than real time (default: "
                    "%(default)s)")
    ap.add_argument("--workload", default="seed-lora", help="default: %(default)s")
    ap.add_argument("--policy", default="llm",
                    help="the balancer's policy (default: %(default)s; the llm policy's "
                    "prefix index grows until its LRU is full, round-robin holds no "
                    "per-request state)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--every", type=float, default=5.0,
                    help="seconds between RSS/fd samples (default: %(default)s)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds excluded from growth (default: a fifth of the run, at "
                    "most 60)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep logs and configs here (default: a temporary directory)")
    ap.add_argument("--json", dest="json_out", help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or not 0 < args.load or args.pods < 1:
        ap.error("--minutes and --load must be positive, --pods at least 1")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as Ctrl-C does
    try:
        r = run(args.minutes, args.load, args.pods, args.time_scale, args.seed, args.workload,
                args.every, args.warmup, args.workdir, args.policy)
    except KeyboardInterrupt:
        print("soak: interrupted; the processes were stopped", file=sys.stderr)
        return 130
    print(report(r))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(r, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
