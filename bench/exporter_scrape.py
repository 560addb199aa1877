"""Scraper cost: N aiohttp endpoints in another process serve realistic vLLM /metrics pages;
this process scrapes them with `contracts.scrape.Scraper` and reports its own CPU (% of one
core) at a given pages/s, plus `parse_metrics` µs per page. `vllm_page` builds the pages.

    python -m bench.exporter_scrape [--pods 50] [--interval 0.25] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import multiprocessing.synchronize
import random
import sys
import time
import timeit
from dataclasses import dataclass, field

from prometheus_client import (CollectorRegistry, Counter, Gauge, GCCollector, Histogram,
                               PlatformCollector, ProcessCollector)
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llmtraffic.contracts import vllm
from llmtraffic.contracts.store import MetricsStore, Pod

_MODEL = "meta-llama/Llama-2-7b-hf"
_ADAPTERS = ("sql-lora", "sql-lora-1", "sql-lora-2", "tweet-summary", "tweet-summary-1")


def vllm_page(*, seed: int = 0, engines: tuple[str, ...] = ("0",), legacy: bool = False,
              model: str = _MODEL, omit: frozenset[str] = frozenset(), nan: bool = False,
              lora_series: int = 3, process_metrics: bool = True) -> bytes:
    """A /metrics page as vLLM exposes it, rendered by prometheus_client: the V1 families
    (or, with `legacy`, the V0 ones without the `engine` label), FACTS.md buckets, random
    seeded values. `omit` drops families by declared name; `nan` makes the gauges NaN/+Inf."""
    rng = random.Random(seed)
    reg = CollectorRegistry()
    if process_metrics:
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=reg)
    labels = ["model_name"] if legacy else ["model_name", "engine"]
    series = [(model,)] if legacy else [(model, e) for e in engines]

    def gauge(name: str, value: float) -> None:
        if name in omit:
            return
        g = Gauge(name, f"vLLM {name}", labels, registry=reg)
        for s in series:
            g.labels(*s).set(value if not nan else rng.choice([float("nan"), float("inf")]))

    def counter(name: str, scale: float, extra: dict[str, list[str]] | None = None) -> None:
        if name in omit:
            return
        keys = list(extra or {})
        c = Counter(name, f"vLLM {name}", labels + keys, registry=reg)
        for s in series:
            for combo in ([()] if not keys else [(v,) for v in extra[keys[0]]]):
                c.labels(*s, *combo).inc(round(rng.random() * scale))

    def histogram(name: str, buckets: tuple[float, ...], scale: float) -> None:
        if name in omit:
            return
        h = Histogram(name, f"vLLM {name}", labels, buckets=buckets, registry=reg)
        for s in series:
            child = h.labels(*s)
            for _ in range(rng.randrange(0, 40)):
                child.observe(rng.expovariate(1.0 / scale))

    gauge(vllm.NUM_REQUESTS_RUNNING, rng.randrange(0, 64))
    gauge(vllm.NUM_REQUESTS_WAITING, rng.randrange(0, 30))
    if legacy:
        gauge(vllm.LEGACY_NUM_REQUESTS_SWAPPED, rng.randrange(0, 3))
        gauge(vllm.LEGACY_GPU_CACHE_USAGE, rng.random())
        gauge(vllm.LEGACY_CPU_CACHE_USAGE, rng.random() / 10)
        gauge(vllm.LEGACY_AVG_PROMPT_THROUGHPUT, rng.random() * 2000)
        gauge(vllm.LEGACY_AVG_GENERATION_THROUGHPUT, rng.random() * 500)
    else:
        gauge(vllm.KV_CACHE_USAGE, rng.random())
    if vllm.LORA_REQUESTS_INFO not in omit:
        g = Gauge(vllm.LORA_REQUESTS_INFO, "Running stats on lora requests.",
                  ["max_lora", "waiting_lora_adapters", "running_lora_adapters"], registry=reg)
        stamp = 1.7e9 + rng.random() * 1e6
        for _ in range(lora_series):
            running = ",".join(rng.sample(_ADAPTERS, rng.randrange(0, 4)))
            waiting = ",".join(rng.sample(_ADAPTERS, rng.randrange(0, 3)))
            stamp += rng.uniform(-5.0, 5.0)
            g.labels("4", waiting, running).set(stamp)
    if vllm.CACHE_CONFIG_INFO not in omit:
        g = Gauge(vllm.CACHE_CONFIG_INFO, "Information of the LLMEngine CacheConfig",
                  ["block_size", "cache_dtype", "enable_prefix_caching", "gpu_memory_utilization",
                   "num_cpu_blocks", "num_gpu_blocks", "engine"], registry=reg)
        for e in (("0",) if legacy else engines):
            g.labels("16", "auto", "True", "0.8", "2048", str(rng.randrange(200, 900)), e).set(1)
    counter(vllm.NUM_PREEMPTIONS, 10)
    counter(vllm.PROMPT_TOKENS, 1e6)
    counter(vllm.GENERATION_TOKENS, 1e6)
    counter(vllm.REQUEST_SUCCESS, 1e4, {"finished_reason": ["stop", "length", "abort"]})
    if legacy:
        counter(vllm.LEGACY_PREFIX_CACHE_QUERIES, 1e6)
        counter(vllm.LEGACY_PREFIX_CACHE_HITS, 5e5)
    else:
        counter(vllm.PREFIX_CACHE_QUERIES, 1e6)
        counter(vllm.PREFIX_CACHE_HITS, 5e5)
    histogram(vllm.ITERATION_TOKENS, vllm.ITERATION_TOKENS_BUCKETS, 300)
    histogram(vllm.TTFT, vllm.TTFT_BUCKETS, 0.3)
    if legacy:
        histogram(vllm.LEGACY_TIME_PER_OUTPUT_TOKEN, vllm.TOKEN_LATENCY_BUCKETS, 0.03)
        histogram(vllm.LEGACY_TIME_IN_QUEUE, vllm.REQUEST_LATENCY_BUCKETS, 0.5)
    else:
        histogram(vllm.INTER_TOKEN_LATENCY, vllm.TOKEN_LATENCY_BUCKETS, 0.03)
        histogram(vllm.TIME_PER_OUTPUT_TOKEN, vllm.TOKEN_LATENCY_BUCKETS, 0.03)
    for name in (vllm.E2E_LATENCY, vllm.QUEUE_TIME, vllm.INFERENCE_TIME, vllm.PREFILL_TIME,
                 vllm.DECODE_TIME):
        histogram(name, vllm.REQUEST_LATENCY_BUCKETS, 3.0)
    token_buckets = tuple(float(b) for b in vllm.build_1_2_5_buckets(4096))
    for name in (vllm.REQUEST_PROMPT_TOKENS, vllm.REQUEST_GENERATION_TOKENS,
                 vllm.REQUEST_MAX_TOKENS):
        histogram(name, token_buckets, 300)
    return generate_latest(reg)


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


async def _scrape_for(pods: list[Pod], interval: float, seconds: float) -> tuple[float, float, dict]:
    from llmtraffic.contracts.scrape import Scraper

    store = MetricsStore()
    store.set_pods(pods)
    counts = _Counts()
    scraper = Scraper(store, interval=interval, timeout=1.0, stats=counts)
    await scraper.scrape_once()  # connections up before measuring
    counts.outcomes.clear()
    task = asyncio.create_task(scraper.run())
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await scraper.close()
    return cpu, wall, counts.outcomes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.exporter_scrape", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=50)
    ap.add_argument("--interval", type=float, default=0.25, help="scrape interval, seconds")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured wall time")
    ap.add_argument("--engines", type=int, default=1, help="data-parallel engines per page")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from llmtraffic.harness.prometheus import free_port

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

    ports = [free_port() for _ in range(args.pods)]
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    server = ctx.Process(target=_serve, args=(ports, pages, ready, stop), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            print("the page server did not start within 30 s", file=sys.stderr)
            return 1
        pods = [Pod(f"pod-{i}", f"127.0.0.1:{p}") for i, p in enumerate(ports)]
        cpu, wall, outcomes = asyncio.run(_scrape_for(pods, args.interval, args.seconds))
    finally:
        stop.set()
        server.join(10)
        if server.is_alive():
            server.kill()
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
