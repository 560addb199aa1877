"""Scraper cost: N aiohttp endpoints in another process serve realistic vLLM /metrics pages;
this process scrapes them with `contracts.scrape.Scraper` and reports its own CPU (% of one
core) at a given pages/s, plus `parse_metrics` µs per page, on pages made by
`simulator.samplepage.vllm_page`.

    python -m bench.exporter_scrape [--pods 50] [--interval 0.25] [--seconds 10]
    python -m bench.exporter_scrape --sweep 10,100,1000,5000 [--budget 2500]

`--sweep` runs the scraper's own scheduler (`Scraper.run`: spread, budget, adaptation) at
each pod count in turn and prints one table: achieved scrapes per pod per second (Hz), the
scheduler's planned period, and this process's CPU as % of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import multiprocessing.synchronize
import sys
import time
import timeit
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from llmtraffic.contracts import vllm
from llmtraffic.contracts.options import SCRAPE_BUDGET
from llmtraffic.contracts.store import MetricsStore, Pod
from llmtraffic.simulator.samplepage import vllm_page


# ---- the benchmark -----------------------------------------------------------------------

def _serve(ports: list[int], pages: list[bytes], ready: multiprocessing.synchronize.Event,
           stop: multiprocessing.synchronize.Event) -> None:
    """Child process: one aiohttp site per port, each serving the pages in turn."""
    from aiohttp import web

    async def main() -> None:
        counter = iter(range(1 << 62))

        async def metrics(_: web.Request) -> web.Response:
            body = pages[next(counter) % len(pages)]
            return web.Response(body=body,
                                headers={"Content-Type": "text/plain; version=0.0.4"})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for port in ports:
            await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        await runner.cleanup()

    asyncio.run(main())


@dataclass
class _Counts:
    outcomes: dict[str, int] = field(default_factory=dict)

    def scrape(self, pod: str, outcome: str, seconds: float) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


async def _scrape_for(pods: list[Pod], interval: float, seconds: float,
                      budget: float = SCRAPE_BUDGET) -> tuple[float, float, dict, float]:
    from llmtraffic.contracts.scrape import Scraper

    store = MetricsStore()
    store.set_pods(pods)
    counts = _Counts()
    scraper = Scraper(store, interval=interval, timeout=1.0, stats=counts, budget=budget)
    await scraper.scrape_once()  # connections up before measuring
    counts.outcomes.clear()
    task = asyncio.create_task(scraper.run())
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    period = scraper.schedule.period
    await scraper.close()
    return cpu, wall, counts.outcomes, period


def _measure(n: int, pages: list[bytes], interval: float, seconds: float,
             budget: float) -> tuple[float, float, dict, float]:
    """Serve `n` fake pods from a child process and scrape them for `seconds`."""
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
        return asyncio.run(_scrape_for(pods, interval, seconds, budget))
    finally:
        stop.set()
        server.join(10)
        if server.is_alive():
            server.kill()


def _sweep(counts: list[int], pages: list[bytes], interval: float, seconds: float,
           budget: float) -> None:
    print(f"interval {interval} s, budget {budget:.0f} scrapes/s, {seconds:.0f} s per row")
    print(f"{'pods':>6} {'period s':>9} {'Hz/pod':>8} {'pages/s':>8} {'CPU %':>6} "
          f"{'µs/page':>8}  errors")
    for n in counts:
        cpu, wall, outcomes, period = _measure(n, pages, interval, seconds, budget)
        ok = outcomes.get("ok", 0)
        errors = {k: v for k, v in outcomes.items() if k != "ok"}
        print(f"{n:>6} {period:>9.2f} {ok / wall / n:>8.2f} {ok / wall:>8.0f} "
              f"{cpu / wall * 100:>6.1f} {cpu / max(ok, 1) * 1e6:>8.0f}  {errors or 'none'}",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.exporter_scrape", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=50)
    ap.add_argument("--interval", type=float, default=0.25, help="scrape interval, seconds")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured wall time")
    ap.add_argument("--engines", type=int, default=1, help="data-parallel engines per page")
    ap.add_argument("--budget", type=float, default=SCRAPE_BUDGET, help="scrapes per second")
    ap.add_argument("--sweep", help="pod counts, e.g. 10,100,1000,5000: one table row each")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    engines = tuple(str(i) for i in range(args.engines))
    pages = [vllm_page(seed=s, engines=engines) for s in range(8)]
    page = pages[0]
    n = 2000
    parse_us = min(timeit.repeat(lambda: vllm.parse_metrics(page), number=n, repeat=3)) / n * 1e6
    lines = page.count(b"\n")
    print(f"page: {len(page)} bytes, {lines} lines, {args.engines} engine(s)")
    text = page.decode()
    ref_us = min(timeit.repeat(lambda: list(text_string_to_metric_families(text)), number=50,
                               repeat=3)) / 50 * 1e6
    print(f"parse_metrics: {parse_us:.1f} µs/page; prometheus_client's parser: {ref_us:.0f} "
          f"µs/page ({ref_us / parse_us:.0f}x slower)")

    if args.sweep:
        _sweep([int(n) for n in args.sweep.split(",")], pages, args.interval, args.seconds,
               args.budget)
        return 0
    try:
        cpu, wall, outcomes, _ = _measure(args.pods, pages, args.interval, args.seconds,
                                          args.budget)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
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
