"""The simulated pod's hand-written /metrics page says exactly what prometheus_client's
generate_latest said for the same observations (the reference below is the declaration
the simulator used before), and the balancer's parser reads both pages alike."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import deque
from types import SimpleNamespace
from typing import Iterator

import aiohttp
import prometheus_client.metrics
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from llmtraffic.contracts import vllm as v
from llmtraffic.simulator.engine import EngineStats
from llmtraffic.simulator.metrics import (LABELS, THROUGHPUT_WINDOW_S, PodMetricsExporter,
                               _count_line, histogram_specs)
from llmtraffic.simulator.server import SimFleet
from llmtraffic.simulator.workloads import SEED_ADAPTERS


# ---- the reference: prometheus_client objects, declared as the simulator declared them ----
class ReferenceExporter:
    """prometheus_client Histograms plus a Collector for the engine's gauges and counters.
    The lora_requests_info timestamp is borrowed from the exporter under test."""

    def __init__(self, server, legacy: bool, twin: PodMetricsExporter) -> None:
        self.server, self.legacy, self.twin = server, legacy, twin
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.labels = (server.model, "0")
        self._window: deque[tuple[float, int, int]] = deque()

        def hist(name: str, doc: str, buckets) -> Histogram:
            return Histogram(name, doc, LABELS, buckets=buckets, registry=r)

        for attr, name, doc, buckets in histogram_specs(legacy, server.config.max_model_len):
            setattr(self, attr, hist(name, doc, buckets))
        r.register(_ReferenceState(self))

    def observe_arrival(self, sim) -> None:
        self.max_tokens_hist.labels(*self.labels).observe(sim.max_tokens)

    def observe_step(self, res) -> None:
        now = time.monotonic()
        self._window.append((now, res.num_prefill_tokens, len(res.outputs)))
        if not self.legacy and (res.num_prefill_tokens or res.num_decode_seqs):
            self.iteration.labels(*self.labels).observe(
                res.num_prefill_tokens + res.num_decode_seqs)

    def observe_first_token(self, sim) -> None:
        self.ttft.labels(*self.labels).observe(self.server.to_wall(sim.first_token - sim.arrival))

    def observe_itl(self, seconds: float) -> None:
        self.itl.labels(*self.labels).observe(seconds)

    def observe_finished(self, sim) -> None:
        wall, lb = self.server.to_wall, self.labels
        self.e2e.labels(*lb).observe(wall(sim.finished_at - sim.arrival))
        self.prompt_hist.labels(*lb).observe(sim.num_prompt)
        self.gen_hist.labels(*lb).observe(sim.num_generated)
        sched = sim.first_scheduled if sim.first_scheduled is not None else sim.arrival
        self.queue.labels(*lb).observe(wall(sched - sim.arrival))
        if self.legacy:
            return
        first = sim.first_token if sim.first_token is not None else sim.finished_at
        self.inference.labels(*lb).observe(wall(sim.finished_at - sched))
        self.prefill.labels(*lb).observe(wall(first - sched))
        self.decode.labels(*lb).observe(wall(sim.finished_at - first))
        if sim.num_generated > 1:
            self.tpot.labels(*lb).observe(
                wall(sim.finished_at - first) / (sim.num_generated - 1))

    def throughput(self) -> tuple[float, float]:
        now = time.monotonic()
        recent = [w for w in self._window if w[0] >= now - THROUGHPUT_WINDOW_S]
        return (sum(w[1] for w in recent) / THROUGHPUT_WINDOW_S,
                sum(w[2] for w in recent) / THROUGHPUT_WINDOW_S)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ReferenceState(Collector):
    def __init__(self, x: ReferenceExporter) -> None:
        self.x = x

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:  # the old collector, verbatim
        x = self.x
        srv = x.server
        st = srv.engine.stats()
        lb = list(x.labels)

        def gauge(name, doc, value):
            g = GaugeMetricFamily(name, doc, labels=LABELS)
            g.add_metric(lb, value)
            return g

        def counter(name, doc, value):
            c = CounterMetricFamily(name, doc, labels=LABELS)
            c.add_metric(lb, value)
            return c

        yield gauge(v.NUM_REQUESTS_RUNNING, "Number of requests in model execution batches.",
                    st.num_running)
        yield gauge(v.NUM_REQUESTS_WAITING, "Number of requests waiting to be processed.",
                    st.num_waiting)
        if not x.legacy:
            by_reason = GaugeMetricFamily(v.NUM_REQUESTS_WAITING_BY_REASON,
                                          v.FAMILIES[v.NUM_REQUESTS_WAITING_BY_REASON].help,
                                          labels=(*LABELS, "reason"))
            by_reason.add_metric([*lb, "capacity"], st.num_waiting - st.num_waiting_deferred)
            by_reason.add_metric([*lb, "deferred"], st.num_waiting_deferred)
            yield by_reason
        if x.legacy:
            yield gauge(v.LEGACY_NUM_REQUESTS_SWAPPED, "Number of requests swapped to CPU.", 0)
            yield gauge(v.LEGACY_GPU_CACHE_USAGE, "GPU KV-cache usage. 1 means 100 percent "
                        "usage.", st.kv_usage)
            yield gauge(v.LEGACY_CPU_CACHE_USAGE, "CPU KV-cache usage. 1 means 100 percent "
                        "usage.", 0.0)
            prompt_tps, gen_tps = x.throughput()
            yield gauge(v.LEGACY_AVG_PROMPT_THROUGHPUT, "Average prefill throughput in "
                        "tokens/s.", prompt_tps)
            yield gauge(v.LEGACY_AVG_GENERATION_THROUGHPUT, "Average generation throughput "
                        "in tokens/s.", gen_tps)
            yield counter(v.LEGACY_PREFIX_CACHE_QUERIES, "GPU prefix cache queries, in terms "
                          "of number of queried tokens.", st.prefix_queries)
            yield counter(v.LEGACY_PREFIX_CACHE_HITS, "GPU prefix cache hits, in terms of "
                          "number of cached tokens.", st.prefix_hits)
        else:
            yield gauge(v.KV_CACHE_USAGE, "KV-cache usage. 1 means 100 percent usage.",
                        st.kv_usage)
            yield counter(v.PREFIX_CACHE_QUERIES, "Prefix cache queries, in terms of number "
                          "of queried tokens.", st.prefix_queries)
            yield counter(v.PREFIX_CACHE_HITS, "Prefix cache hits, in terms of number of "
                          "cached tokens.", st.prefix_hits)
        yield counter(v.NUM_PREEMPTIONS, "Cumulative number of preemption from the engine.",
                      st.preemptions)
        yield counter(v.PROMPT_TOKENS, "Number of prefill tokens processed.", st.prompt_tokens)
        yield counter(v.GENERATION_TOKENS, "Number of generation tokens processed.",
                      st.generation_tokens)
        success = CounterMetricFamily(v.REQUEST_SUCCESS, "Count of successfully processed "
                                      "requests.", labels=(*LABELS, "finished_reason"))
        for reason in ("stop", "length", "abort"):
            success.add_metric([*lb, reason], st.finished.get(reason, 0))
        yield success
        info = GaugeMetricFamily(v.LORA_REQUESTS_INFO, "Running stats on lora requests.",
                                 labels=("max_lora", "running_lora_adapters",
                                         "waiting_lora_adapters"))
        x.twin.lora_info(st.running_adapters, st.waiting_adapters)
        for (running, waiting), stamp in x.twin._lora_sets.items():  # older sets linger
            info.add_metric([str(st.max_loras), ",".join(running), ",".join(waiting)], stamp)
        yield info
        cfg = srv.config
        cache = GaugeMetricFamily(v.CACHE_CONFIG_INFO, "Information of the LLMEngine "
                                  "CacheConfig", labels=(
                                      "block_size", "cache_dtype", "enable_prefix_caching",
                                      "gpu_memory_utilization", "num_cpu_blocks",
                                      "num_gpu_blocks"))
        util = srv.options.gpu_memory_utilization or srv.profile.gpu_memory_utilization
        cache.add_metric([str(cfg.block_size), "auto", str(cfg.enable_prefix_caching),
                          str(util), "0", str(cfg.num_gpu_blocks)], 1.0)
        yield cache


class Tee:
    """Stands in for a server's exporter: every observation goes to both."""

    def __init__(self, new: PodMetricsExporter, ref: ReferenceExporter) -> None:
        self.new, self.ref = new, ref

    def __getattr__(self, name: str):
        if not name.startswith("observe_"):
            return getattr(self.new, name)
        a, b = getattr(self.new, name), getattr(self.ref, name)
        return lambda arg: (a(arg), b(arg))


# ---- comparison ------------------------------------------------------------------------
_CREATED_VALUE = re.compile(r"^(\S+_created\{[^}]*\}) \S+$", re.M)


def families(page: bytes) -> list[tuple]:
    """Every family and sample; `_created` values are blanked (creation times differ)."""
    out = []
    for f in text_string_to_metric_families(page.decode()):
        samples = []
        for s in f.samples:
            created = s.name.endswith("_created")
            assert not created or s.value > 1e9, s  # a unix time, present
            samples.append((s.name, s.labels, None if created else floatToGoString(s.value),
                            s.timestamp))
        out.append((f.name, f.type, f.documentation, samples))
    return out


def assert_same_page(new: bytes, ref: bytes) -> None:
    assert families(new) == families(ref)
    assert v.parse_metrics(new) == v.parse_metrics(ref)
    blank = (lambda page: _CREATED_VALUE.sub(r"\1 T", page.decode()))
    assert blank(new) == blank(ref)  # byte for byte, but for the creation times


# ---- synthetic observations: edges, escaping, many requests -----------------------------
def fake_server(model: str = 'org/model "q" \\ back\nslash'):
    stats = EngineStats(num_running=0, num_waiting=0, kv_usage=0.0, running_adapters=(),
                        waiting_adapters=(), max_loras=4, prompt_tokens=0,
                        generation_tokens=0, prefix_queries=0, prefix_hits=0, preemptions=0,
                        finished={})
    return SimpleNamespace(
        model=model, to_wall=lambda s: s, engine=SimpleNamespace(stats=lambda: stats),
        stats=stats, config=SimpleNamespace(max_model_len=4096, block_size=16,
                                            enable_prefix_caching=True, num_gpu_blocks=2810),
        options=SimpleNamespace(gpu_memory_utilization=None),
        profile=SimpleNamespace(gpu_memory_utilization=0.9))


def sim(arrival=0.0, sched=None, first=None, done=0.0, prompt=0, generated=0, max_tokens=0):
    return SimpleNamespace(arrival=arrival, first_scheduled=sched, first_token=first,
                           finished_at=done, num_prompt=prompt, num_generated=generated,
                           max_tokens=max_tokens)


def step(prefill: int, decode: int, outputs: int):
    return SimpleNamespace(num_prefill_tokens=prefill, num_decode_seqs=decode,
                           outputs=[None] * outputs)


def edge_observations(x) -> None:
    """Zero, every bucket boundary, just past it, and far past the last bucket."""
    for b in (0.0, *v.TTFT_BUCKETS, 2560.0000001, 1e7):
        x.observe_first_token(sim(first=b))
    for b in (0.0, *v.TOKEN_LATENCY_BUCKETS, 80.5, 1e12, float("inf")):
        x.observe_itl(b)
    for n in (0, *v.build_1_2_5_buckets(4096), 2001, 4096, 10**9):
        x.observe_arrival(sim(max_tokens=n))
        x.observe_finished(sim(done=n / 100, prompt=n, generated=n))
    for b in (0.0, *v.REQUEST_LATENCY_BUCKETS, 7680.25, 1e9):
        x.observe_finished(sim(sched=b, first=b, done=b, generated=2))
        x.observe_finished(sim(sched=0.0, first=None, done=b, generated=1))
    for n in (0, *v.ITERATION_TOKENS_BUCKETS, 16385, 10**7):
        x.observe_step(step(n, 0, 1))
        x.observe_step(step(0, n, n % 7))


def random_requests(x, rng: random.Random, n: int) -> None:
    edges = (*v.TTFT_BUCKETS, *v.REQUEST_LATENCY_BUCKETS, *v.TOKEN_LATENCY_BUCKETS)
    for _ in range(n):
        t0 = rng.uniform(0, 1000)
        lat = (lambda: rng.choice(edges) if rng.random() < 0.3 else rng.expovariate(2.0))
        r = sim(arrival=t0, max_tokens=rng.choice((1, 16, 256, 2000, rng.randrange(5000))))
        x.observe_arrival(r)
        r.first_scheduled = t0 + lat() if rng.random() < 0.9 else None
        r.first_token = (r.first_scheduled or t0) + lat() if rng.random() < 0.95 else None
        r.num_prompt, r.num_generated = rng.randrange(1, 4000), rng.randrange(0, 300)
        if r.first_token is not None:
            x.observe_first_token(r)
        for _ in range(rng.randrange(4)):
            x.observe_itl(lat() / 10)
        r.finished_at = (r.first_token or r.first_scheduled or t0) + lat()
        x.observe_step(step(rng.randrange(0, 9000), rng.randrange(0, 256), rng.randrange(9)))
        x.observe_finished(r)


def set_stats(server, rng: random.Random) -> None:
    st = server.stats
    st.num_running, st.num_waiting = rng.randrange(300), rng.randrange(5000)
    st.kv_usage = rng.random()
    st.running_adapters = tuple(sorted(rng.sample(('sql-lora', 'a"quote', 'back\\slash',
                                                   'new\nline', 'uni-é✓'), 3)))
    st.waiting_adapters = ("tweet-summary",) if rng.random() < 0.5 else ()
    st.num_waiting_deferred = rng.randrange(st.num_waiting + 1)
    st.prompt_tokens += rng.randrange(10**6)
    st.generation_tokens += rng.randrange(10**5)
    st.prefix_queries, st.prefix_hits = st.prompt_tokens, st.prompt_tokens // 3
    st.preemptions += rng.randrange(3)
    st.finished = {"stop": rng.randrange(10**7), "length": rng.randrange(10)}


def pair(legacy: bool, server=None):
    server = server or fake_server()
    new = PodMetricsExporter(server, legacy=legacy)
    return server, new, ReferenceExporter(server, legacy, new)


@pytest.mark.parametrize("legacy", [False, True], ids=["v1", "legacy"])
def test_page_matches_prometheus_client(legacy):
    server, new, ref = pair(legacy)
    both = Tee(new, ref)
    assert_same_page(new.render(), ref.render())  # nothing observed: headers only
    assert b"_created" not in new.render()
    edge_observations(both)
    assert_same_page(new.render(), ref.render())
    rng = random.Random(7)
    for _ in range(4):
        random_requests(both, rng, 750)
        set_stats(server, rng)
        assert_same_page(new.render(), ref.render())
    names = {f[0] for f in families(new.render())}
    assert (v.LEGACY_TIME_IN_QUEUE in names) == legacy
    assert (v.QUEUE_TIME in names) == (not legacy)


def test_page_matches_with_created_series_disabled(monkeypatch):
    monkeypatch.setattr(prometheus_client.metrics, "_use_created", False)
    server, new, ref = pair(False)
    edge_observations(Tee(new, ref))
    assert b"_created" not in new.render()
    assert_same_page(new.render(), ref.render())


def test_counts_past_a_million_are_written_like_floats():
    for n in (0, 1, 999_999, 1_000_000, 1_234_567, 10**7, 2**53, 10**16 + 1):
        assert _count_line(n) == floatToGoString(float(n)) + "\n"


# ---- a real simulated pod under load ----------------------------------------------------
@pytest.mark.parametrize("version", ["v1", "legacy"])
async def test_live_pod_page_matches_prometheus_client(version):
    fleet = SimFleet(1, time_scale=100.0, metrics_version=version, max_loras=2,
                     lora_modules={a: f"/adapters/{a}" for a in SEED_ADAPTERS[:4]})
    srv = fleet.servers[0]
    new = srv.metrics
    ref = ReferenceExporter(srv, version == "legacy", new)
    srv.metrics = Tee(new, ref)
    await fleet.start()
    try:
        async with aiohttp.ClientSession() as s:
            async def one(i: int) -> None:
                model = srv.model if i % 3 else SEED_ADAPTERS[i % 4]
                body = {"model": model, "prompt": f"tell me about {i} " * (3 + i % 50),
                        "max_tokens": 4 + (i * 7) % 90}
                async with s.post(srv.url + "/v1/completions", json=body) as r:
                    assert r.status == 200, await r.text()

            load = asyncio.gather(*(one(i) for i in range(60)))
            busy = False
            for _ in range(200):  # compare mid-flight too (running, waiting, adapters)
                await asyncio.sleep(0.005)
                assert_same_page(new.render(), ref.render())
                busy |= srv.engine.stats().num_running > 0
                if load.done():
                    break
            await load
            assert busy
            page = new.render()
            assert_same_page(page, ref.render())
            async with s.get(srv.url + "/metrics") as r:
                assert_same_page(await r.read(), ref.render())
    finally:
        await fleet.stop()
    assert v.parse_metrics(page).ttft.count == 60
