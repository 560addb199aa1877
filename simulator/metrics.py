"""A simulated pod's /metrics page under vLLM's own names (V1, or the legacy V0 names of
older images), declared with prometheus_client the way vLLM declares them."""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import vllm as v
from simulator.engine import SimRequest, StepResult

if TYPE_CHECKING:
    from simulator.server import SimServer

LABELS = ("model_name", "engine")
THROUGHPUT_WINDOW_S = 10.0  # legacy avg_*_throughput gauges average over this window


class PodMetricsExporter:
    """Histograms observed as requests progress; gauges and counters read from the engine
    at scrape time (so they are exact)."""

    def __init__(self, server: "SimServer", legacy: bool = False) -> None:
        self.server = server
        self.legacy = legacy
        self.registry = CollectorRegistry(auto_describe=True)
        self.labels = (server.model, "0")
        max_len = server.config.max_model_len
        r = self.registry

        def hist(name: str, doc: str, buckets) -> Histogram:
            return Histogram(name, doc, LABELS, buckets=buckets, registry=r)

        self.ttft = hist(v.TTFT, "Histogram of time to first token in seconds.",
                         v.TTFT_BUCKETS)
        self.e2e = hist(v.E2E_LATENCY, "Histogram of e2e request latency in seconds.",
                        v.REQUEST_LATENCY_BUCKETS)
        tokens_125 = v.build_1_2_5_buckets(max_len)
        self.prompt_hist = hist(v.REQUEST_PROMPT_TOKENS, "Number of prefill tokens processed.",
                                tokens_125)
        self.gen_hist = hist(v.REQUEST_GENERATION_TOKENS,
                             "Number of generation tokens processed.", tokens_125)
        self.max_tokens_hist = hist(v.REQUEST_MAX_TOKENS,
                                    "Histogram of the max_tokens request parameter.",
                                    tokens_125)
        if legacy:
            self.itl = hist(v.LEGACY_TIME_PER_OUTPUT_TOKEN,
                            "Histogram of time per output token in seconds.",
                            v.TOKEN_LATENCY_BUCKETS)
            self.queue = hist(v.LEGACY_TIME_IN_QUEUE,
                              "Histogram of time the request spent in the queue in seconds.",
                              v.REQUEST_LATENCY_BUCKETS)
        else:
            self.itl = hist(v.INTER_TOKEN_LATENCY, "Histogram of inter-token latency in seconds.",
                            v.TOKEN_LATENCY_BUCKETS)
            self.tpot = hist(v.TIME_PER_OUTPUT_TOKEN,
                             "Histogram of time_per_output_token_seconds per request.",
                             v.TOKEN_LATENCY_BUCKETS)
            self.queue = hist(v.QUEUE_TIME, "Histogram of time spent in WAITING phase.",
                              v.REQUEST_LATENCY_BUCKETS)
            self.inference = hist(v.INFERENCE_TIME,
                                  "Histogram of time spent in RUNNING phase.",
                                  v.REQUEST_LATENCY_BUCKETS)
            self.prefill = hist(v.PREFILL_TIME, "Histogram of time spent in PREFILL phase.",
                                v.REQUEST_LATENCY_BUCKETS)
            self.decode = hist(v.DECODE_TIME, "Histogram of time spent in DECODE phase.",
                               v.REQUEST_LATENCY_BUCKETS)
            self.iteration = hist(v.ITERATION_TOKENS, "Histogram of number of tokens per "
                                  "engine_step.", v.ITERATION_TOKENS_BUCKETS)
        self.registry.register(_StateCollector(self))
        self._lora_state: tuple = ()
        self._lora_ts = time.time()
        self._window: deque[tuple[float, int, int]] = deque()

    # ---- observations ------------------------------------------------------------------
    def observe_arrival(self, sim: SimRequest) -> None:
        self.max_tokens_hist.labels(*self.labels).observe(sim.max_tokens)

    def observe_step(self, res: StepResult) -> None:
        now = time.monotonic()
        self._window.append((now, res.num_prefill_tokens, len(res.outputs)))
        while self._window and self._window[0][0] < now - THROUGHPUT_WINDOW_S:
            self._window.popleft()
        if not self.legacy and (res.num_prefill_tokens or res.num_decode_seqs):
            self.iteration.labels(*self.labels).observe(
                res.num_prefill_tokens + res.num_decode_seqs)

    def observe_first_token(self, sim: SimRequest) -> None:
        wall = self.server.to_wall
        self.ttft.labels(*self.labels).observe(wall(sim.first_token - sim.arrival))

    def observe_itl(self, seconds: float) -> None:
        self.itl.labels(*self.labels).observe(seconds)

    def observe_finished(self, sim: SimRequest) -> None:
        wall = self.server.to_wall
        lb = self.labels
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

    # ---- exposition --------------------------------------------------------------------
    def render(self) -> bytes:
        return generate_latest(self.registry)

    def lora_info(self, running: tuple[str, ...], waiting: tuple[str, ...]) -> float:
        """The update timestamp vLLM puts in lora_requests_info's value."""
        state = (running, waiting)
        if state != self._lora_state:
            self._lora_state = state
            self._lora_ts = time.time()
        return self._lora_ts

    def throughput(self) -> tuple[float, float]:
        now = time.monotonic()
        recent = [w for w in self._window if w[0] >= now - THROUGHPUT_WINDOW_S]
        return (sum(w[1] for w in recent) / THROUGHPUT_WINDOW_S,
                sum(w[2] for w in recent) / THROUGHPUT_WINDOW_S)


class _StateCollector(Collector):
    """Gauges and counters straight from the engine's state at scrape time."""

    def __init__(self, exporter: PodMetricsExporter) -> None:
        self.x = exporter

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        x = self.x
        srv = x.server
        st = srv.engine.stats()
        lb = list(x.labels)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=LABELS)
            g.add_metric(lb, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=LABELS)
            c.add_metric(lb, value)
            return c

        yield gauge(v.NUM_REQUESTS_RUNNING, "Number of requests in model execution batches.",
                    st.num_running)
        yield gauge(v.NUM_REQUESTS_WAITING, "Number of requests waiting to be processed.",
                    st.num_waiting)
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
        info.add_metric([str(st.max_loras), ",".join(st.running_adapters),
                         ",".join(st.waiting_adapters)],
                        x.lora_info(st.running_adapters, st.waiting_adapters))
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
