"""Scraper cost: N fake pods in another process (one listening socket each, answering from
prepared bytes with keep-alive) serve realistic vLLM /metrics pages; this process scrapes
them with `contracts.scrape.Scraper` and reports its own CPU (% of one core) at a given
pages/s, plus `parse_metrics` µs per page, on pages made by `simulator.samplepage.vllm_page`.

    python -m bench.exporter_scrape [--pods 50] [--interval 0.25] [--seconds 10]
    python -m bench.exporter_scrape --sweep 10,100,1000,5000 [--budget 2500] [--workers 2]

`--sweep` runs the scraper's own scheduler (`Scraper.run`: spread, budget, adaptation) at
each pod count in turn, measured after a warm-up (two periods and WARM_UP_S), and prints one
table: achieved scrapes per pod per second (Hz), the
scheduler's planned period, this process's CPU as % of one core (and µs per page), the page
server's CPU, the pods without fresh metrics at the end (stale) and the failed scrapes.
`--workers N` scrapes from N processes sharing their scrapes as the balancer's workers do
(CPU: all of them together, and the busiest one).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import multiprocessing
import multiprocessing.synchronize
import os
import shutil
import sys
import tempfile
import time
import timeit
from dataclasses import dataclass
from typing import Iterator

from prometheus_client.parser import text_string_to_metric_families

from llmtraffic.balancer.eventloop import CHOICES, loop_name
from llmtraffic.balancer.eventloop import run as run_loop
from llmtraffic.balancer.scrapeshare import WorkerScrapeShare
from llmtraffic.balancer.workers import WorkerSeat
from llmtraffic.contracts import vllm
from llmtraffic.contracts.options import SCRAPE_BUDGET
from llmtraffic.contracts.store import MetricsStore, Pod
from llmtraffic.simulator.samplepage import vllm_page


# ---- the benchmark -----------------------------------------------------------------------

class _PageServer(asyncio.Protocol):
    """One fake pod's connection: answers each `GET /metrics` with the next prepared response
    (keep-alive, no parsing beyond the request line), anything else with a 404."""

    def __init__(self, responses: list[bytes], turn: Iterator[int]) -> None:
        self.responses, self.turn = responses, turn
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
            if head.startswith(b"GET /metrics "):
                self.transport.write(  # type: ignore[union-attr]
                    self.responses[next(self.turn) % len(self.responses)])
            else:
                self.transport.write(_NOT_FOUND)  # type: ignore[union-attr]


_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


def _serve(ports: list[int], pages: list[bytes], ready: multiprocessing.synchronize.Event,
           stop: multiprocessing.synchronize.Event) -> None:
    """Child process: one listening socket per port, each serving the pages in turn from
    prepared bytes (so that the figures measure the scraper, not the page server)."""
    responses = [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(page), page) for page in pages]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        turn = itertools.count()
        servers = [await loop.create_server(lambda: _PageServer(responses, turn), "127.0.0.1",
                                            port, backlog=64) for port in ports]
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        for server in servers:
            server.close()

    asyncio.run(main())


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: Seconds the scraper runs before it is measured, beyond two periods: a rate cut while it
#: made its connections (they cost more than a scrape) grows back by a tenth a second.
WARM_UP_S = 6.0


@dataclass
class _Run:
    """What one measured run gives."""

    cpu: float  # the scraping processes' CPU seconds, all together
    busiest: float  # the busiest scraping process's CPU seconds
    wall: float
    outcomes: dict[str, int]
    period: float  # the schedule's planned period at the end
    stale: int  # pods without fresh metrics at the end
    server_cpu: float  # the page server's CPU seconds


async def _scrape_for(pods: list[Pod], interval: float, seconds: float, budget: float,
                      server: int, seat: WorkerSeat | None = None) -> _Run:
    """Scrape `pods` for `seconds` after a warm-up; with a `seat`, as that worker of the
    balancer's (its share of the pods, outcomes exchanged with the other workers)."""
    from llmtraffic.contracts.scrape import ScrapeCounts, Scraper, stale_pods

    store = MetricsStore()
    store.set_pods(pods)
    counts = ScrapeCounts()
    scraper = Scraper(store, interval=interval, timeout=1.0, stats=counts, budget=budget)
    if seat is not None:
        scraper.share = WorkerScrapeShare(seat)
    task = asyncio.create_task(scraper.run())
    await asyncio.sleep(0.1)  # the plan is made: warm up over two periods (connections
    await asyncio.sleep(max(2.0, 2 * scraper.schedule.period) + WARM_UP_S)  # made) and more
    counts.scrapes.clear()
    cpu0, wall0, server0 = time.process_time(), time.perf_counter(), _cpu_seconds(server)
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    server_cpu = _cpu_seconds(server) - server0
    stale = stale_pods(store.snapshot(time.monotonic()))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    period = scraper.schedule.period
    await scraper.close()
    outcomes: dict[str, int] = {}
    for (_, outcome), n in counts.scrapes.items():
        outcomes[outcome] = outcomes.get(outcome, 0) + n
    return _Run(cpu, cpu, wall, outcomes, period, stale, server_cpu)


def _worker(pods: list[Pod], interval: float, seconds: float, budget: float, server: int,
            seat: WorkerSeat, loop: str, results: multiprocessing.Queue) -> None:
    """Child process: one of `seat.count` scraping workers; its _Run goes to `results`."""
    results.put(run_loop(_scrape_for(pods, interval, seconds, budget, server, seat), loop))


def _workers(pods: list[Pod], interval: float, seconds: float, budget: float, server: int,
             count: int, loop: str) -> _Run:
    """`count` scraping processes sharing their scrapes as the balancer's workers do, the
    budget split between them; their figures added up (period, stale: the worst one's)."""
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = ctx.Queue()
    rundir = tempfile.mkdtemp(prefix="bench-scrape-")
    procs = [ctx.Process(target=_worker, args=(
        pods, interval, seconds, budget / count, server,
        WorkerSeat(i, count, "127.0.0.1", 0, rundir), loop, results), daemon=True)
        for i in range(count)]
    for p in procs:
        p.start()
    try:
        runs = [results.get(timeout=120 + 4 * seconds + len(pods) / 100) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        shutil.rmtree(rundir, ignore_errors=True)
    outcomes: dict[str, int] = {}
    for r in runs:
        for k, v in r.outcomes.items():
            outcomes[k] = outcomes.get(k, 0) + v
    return _Run(sum(r.cpu for r in runs), max(r.cpu for r in runs),
                sum(r.wall for r in runs) / count, outcomes, max(r.period for r in runs),
                max(r.stale for r in runs), sum(r.server_cpu for r in runs) / count)


def _measure(n: int, pages: list[bytes], interval: float, seconds: float,
             budget: float, loop: str = "auto", workers: int = 1) -> _Run:
    """Serve `n` fake pods from a child process and scrape them for `seconds` (from this
    process, or from `workers` processes sharing their scrapes)."""
    from llmtraffic.harness.prometheus import free_port

    taken: set[int] = set()
    while len(taken) < n:  # free_port may hand out a port twice
        taken.add(free_port())
    ports = sorted(taken)
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    server = ctx.Process(target=_serve, args=(ports, pages, ready, stop), daemon=True)
    server.start()
    try:
        wait = 60 + n / 10
        while not ready.wait(1.0) and server.is_alive() and wait > 0:
            wait -= 1.0
        if not ready.is_set():
            raise RuntimeError(f"the page server for {n} pods did not start (see above)")
        pods = [Pod(f"pod-{i}", f"127.0.0.1:{p}") for i, p in enumerate(ports)]
        if workers > 1:
            return _workers(pods, interval, seconds, budget, server.pid, workers, loop)
        return run_loop(_scrape_for(pods, interval, seconds, budget, server.pid), loop)
    finally:
        stop.set()
        server.join(10)
        if server.is_alive():
            server.kill()


def _sweep(counts: list[int], pages: list[bytes], interval: float, seconds: float,
           budget: float, loop: str, workers: int) -> None:
    print(f"interval {interval} s, budget {budget:.0f} scrapes/s, {seconds:.0f} s per row "
          f"(after a warm-up), event loop {loop_name(loop)}, {workers} scraping "
          f"process(es){' sharing their scrapes' if workers > 1 else ''}")
    print(f"{'pods':>6} {'period s':>9} {'Hz/pod':>8} {'pages/s':>8} {'CPU %':>6} "
          f"{'busiest %':>9} {'µs/page':>8} {'server %':>9} {'stale':>6}  errors")
    for n in counts:
        r = _measure(n, pages, interval, seconds, budget, loop, workers)
        ok = r.outcomes.get("ok", 0)
        errors = {k: v for k, v in r.outcomes.items() if k != "ok"}
        print(f"{n:>6} {r.period:>9.2f} {ok / r.wall / n:>8.2f} {ok / r.wall:>8.0f} "
              f"{r.cpu / r.wall * 100:>6.1f} {r.busiest / r.wall * 100:>9.1f} "
              f"{r.cpu / max(ok, 1) * 1e6:>8.0f} {r.server_cpu / r.wall * 100:>9.1f} "
              f"{r.stale:>6}  {errors or 'none'}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.exporter_scrape", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=50)
    ap.add_argument("--interval", type=float, default=0.25, help="scrape interval, seconds")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured wall time")
    ap.add_argument("--engines", type=int, default=1, help="data-parallel engines per page")
    ap.add_argument("--budget", type=float, default=SCRAPE_BUDGET, help="scrapes per second")
    ap.add_argument("--sweep", help="pod counts, e.g. 10,100,1000,5000: one table row each")
    ap.add_argument("--workers", type=int, default=1,
                    help="scraping processes sharing their scrapes, as `llmtraffic balancer "
                    "--workers N` does (the budget split between them)")
    ap.add_argument("--loop", choices=CHOICES, default="auto",
                    help="event loop of the scraping process (auto: uvloop when installed, "
                    "as the balancer)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    engines = tuple(str(i) for i in range(args.engines))
    pages = [vllm_page(seed=s, engines=engines) for s in range(8)]
    page = pages[0]
    n = 2000
    parse_us = min(timeit.repeat(lambda: vllm.parse_metrics(page), number=n, repeat=3)) / n * 1e6
    python_us = min(timeit.repeat(lambda: vllm.parse_metrics_python(page), number=n // 4,
                                  repeat=3)) / (n // 4) * 1e6
    lines = page.count(b"\n")
    print(f"page: {len(page)} bytes, {lines} lines, {args.engines} engine(s)")
    text = page.decode()
    ref_us = min(timeit.repeat(lambda: list(text_string_to_metric_families(text)), number=50,
                               repeat=3)) / 50 * 1e6
    scan = "the C page scan" if vllm._scan is not None else "no C page scan (not built)"
    print(f"parse_metrics: {parse_us:.1f} µs/page ({scan}); its Python parser alone: "
          f"{python_us:.0f} µs/page ({python_us / parse_us:.1f}x); prometheus_client's "
          f"parser: {ref_us:.0f} µs/page ({ref_us / parse_us:.0f}x)")

    if args.sweep:
        _sweep([int(n) for n in args.sweep.split(",")], pages, args.interval, args.seconds,
               args.budget, args.loop, args.workers)
        return 0
    try:
        r = _measure(args.pods, pages, args.interval, args.seconds, args.budget, args.loop,
                     args.workers)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    cpu, wall, outcomes = r.cpu, r.wall, r.outcomes
    ok = outcomes.get("ok", 0)
    errors = {k: v for k, v in outcomes.items() if k != "ok"}
    target = args.pods / args.interval
    print(f"scraped {args.pods} pods every {args.interval * 1000:.0f} ms for {wall:.1f} s: "
          f"{ok / wall:.0f} pages/s ok (target {target:.0f}), errors {errors or 'none'}")
    print(f"scraper CPU: {cpu / wall * 100:.1f}% of one core "
          f"({cpu / max(ok, 1) * 1e6:.0f} µs CPU per page fetched+parsed; goal <= 20% at "
          f"200 pages/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
