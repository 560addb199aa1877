"""A simulated pod's /metrics page under vLLM's own names (V1, or the legacy V0 names of
older images), written as text byte for byte the way prometheus_client's generate_latest
writes vLLM's declarations (pods share one process, so a scrape must cost little)."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from itertools import accumulate
from operator import add
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from prometheus_client import metrics as _pc_metrics
from prometheus_client.utils import INF, floatToGoString

from llmtraffic.contracts import vllm as v
from llmtraffic.simulator.engine import EngineStats, SimRequest, StepResult

if TYPE_CHECKING:
    from llmtraffic.simulator.server import SimServer

LABELS = ("model_name", "engine")
THROUGHPUT_WINDOW_S = 10.0  # legacy avg_*_throughput gauges average over this window


def _escape_value(s: str) -> str:
    """A label value as prometheus_client escapes it."""
    return s.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _label_text(labels: dict[str, str]) -> str:
    """`{a="x",b="y"}`: names sorted, values escaped, as prometheus_client writes them."""
    return "{" + ",".join(f'{k}="{_escape_value(val)}"'
                          for k, val in sorted(labels.items())) + "}"


def _header(name: str, doc: str, kind: str) -> str:
    doc = doc.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


def _count_line(n: int) -> str:
    """An integer count as floatToGoString writes the float it would be, plus newline
    (repr of a float below 1e6 that holds an integer is "<int>.0")."""
    return f"{n}.0\n" if 0 <= n < 1_000_000 else floatToGoString(n) + "\n"


def _use_created() -> bool:
    """prometheus_client's switch for the *_created series (PROMETHEUS_DISABLE_CREATED_SERIES)."""
    return getattr(_pc_metrics, "_use_created", True)


class _Histogram:
    """One labelled prometheus_client Histogram child: counts per bucket, sum, created time;
    the sample lines are cached until the next observation."""

    __slots__ = ("bounds", "counts", "sum", "created", "_head", "_bucket_prefixes",
                 "_count_prefix", "_sum_prefix", "_created_head", "_text")

    def __init__(self, name: str, doc: str, buckets: Sequence[float],
                 labels: dict[str, str]) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError(f"histogram {name}: buckets not in sorted order: {buckets}")
        if not bounds or bounds[-1] != INF:
            bounds.append(INF)
        self.bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative
        self.sum = 0.0
        self.created: float | None = None  # set by the first observation, like .labels()
        lab = _label_text(labels)
        self._head = _header(name, doc, "histogram")
        self._bucket_prefixes = [
            f"{name}_bucket{_label_text({**labels, 'le': floatToGoString(b)})} "
            for b in bounds]
        self._count_prefix = f"{name}_count{lab} "
        self._sum_prefix = f"{name}_sum{lab} " if bounds[0] >= 0 else None
        self._created_head = f"{_header(name + '_created', doc, 'gauge')}{name}_created{lab} "
        self._text: str | None = None

    def observe(self, amount: float) -> None:
        if self.created is None:
            self.created = time.time()
        self.sum += amount
        i = bisect_left(self.bounds, amount)
        if amount <= self.bounds[i]:  # False only for NaN, which no bucket counts
            self.counts[i] += 1
        self._text = None

    def render(self, out: list[str], created: bool) -> None:
        out.append(self._head)
        if self.created is None:
            return
        text = self._text
        if text is None:
            cumulative = list(accumulate(self.counts))
            lines = list(map(add, self._bucket_prefixes, map(_count_line, cumulative)))
            lines.append(self._count_prefix + _count_line(cumulative[-1]))
            if self._sum_prefix is not None:
                lines.append(f"{self._sum_prefix}{floatToGoString(self.sum)}\n")
            text = self._text = "".join(lines)
        out.append(text)
        if created:
            out.append(f"{self._created_head}{floatToGoString(self.created)}\n")


# (kind, name, help, value from the engine's stats and the (prompt, generation) throughput)
_Value = Callable[[EngineStats, tuple[float, float]], float]
_STATE_HEAD: tuple[tuple[str, str, str, _Value], ...] = (
    ("gauge", v.NUM_REQUESTS_RUNNING, "Number of requests in model execution batches.",
     lambda st, tps: st.num_running),
    ("gauge", v.NUM_REQUESTS_WAITING, "Number of requests waiting to be processed.",
     lambda st, tps: st.num_waiting),
)
_STATE_LEGACY: tuple[tuple[str, str, str, _Value], ...] = (
    ("gauge", v.LEGACY_NUM_REQUESTS_SWAPPED, "Number of requests swapped to CPU.",
     lambda st, tps: 0),
    ("gauge", v.LEGACY_GPU_CACHE_USAGE, "GPU KV-cache usage. 1 means 100 percent usage.",
     lambda st, tps: st.kv_usage),
    ("gauge", v.LEGACY_CPU_CACHE_USAGE, "CPU KV-cache usage. 1 means 100 percent usage.",
     lambda st, tps: 0.0),
    ("gauge", v.LEGACY_AVG_PROMPT_THROUGHPUT, "Average prefill throughput in tokens/s.",
     lambda st, tps: tps[0]),
    ("gauge", v.LEGACY_AVG_GENERATION_THROUGHPUT,
     "Average generation throughput in tokens/s.", lambda st, tps: tps[1]),
    ("counter", v.LEGACY_PREFIX_CACHE_QUERIES,
     "GPU prefix cache queries, in terms of number of queried tokens.",
     lambda st, tps: st.prefix_queries),
    ("counter", v.LEGACY_PREFIX_CACHE_HITS,
     "GPU prefix cache hits, in terms of number of cached tokens.",
     lambda st, tps: st.prefix_hits),
)
_STATE_V1: tuple[tuple[str, str, str, _Value], ...] = (
    ("gauge", v.KV_CACHE_USAGE, "KV-cache usage. 1 means 100 percent usage.",
     lambda st, tps: st.kv_usage),
    ("counter", v.PREFIX_CACHE_QUERIES,
     "Prefix cache queries, in terms of number of queried tokens.",
     lambda st, tps: st.prefix_queries),
    ("counter", v.PREFIX_CACHE_HITS, "Prefix cache hits, in terms of number of cached tokens.",
     lambda st, tps: st.prefix_hits),
)
_STATE_TAIL: tuple[tuple[str, str, str, _Value], ...] = (
    ("counter", v.NUM_PREEMPTIONS, "Cumulative number of preemption from the engine.",
     lambda st, tps: st.preemptions),
    ("counter", v.PROMPT_TOKENS, "Number of prefill tokens processed.",
     lambda st, tps: st.prompt_tokens),
    ("counter", v.GENERATION_TOKENS, "Number of generation tokens processed.",
     lambda st, tps: st.generation_tokens),
)
_FINISHED_REASONS = ("stop", "length", "abort")
_CACHE_LABELS = ("block_size", "cache_dtype", "enable_prefix_caching",
                 "gpu_memory_utilization", "num_cpu_blocks", "num_gpu_blocks")


def _exposed_name(kind: str, name: str) -> str:
    """Counters are exposed as <name>_total (CounterMetricFamily strips a given _total)."""
    if kind != "counter":
        return name
    return (name[:-6] if name.endswith("_total") else name) + "_total"


def _scalar_prefix(kind: str, name: str, doc: str, labels: str) -> str:
    """Header and sample name of a one-sample family, up to the value."""
    name = _exposed_name(kind, name)
    return f"{_header(name, doc, kind)}{name}{labels} "


def histogram_specs(legacy: bool, max_model_len: int) -> \
        list[tuple[str, str, str, tuple[float, ...]]]:
    """(attribute, vLLM name, help, buckets) of every histogram a pod exposes, as vLLM
    declares them: V1 names, or the legacy V0 ones."""
    tokens_125 = tuple(v.build_1_2_5_buckets(max_model_len))
    specs = [
        ("ttft", v.TTFT, "Histogram of time to first token in seconds.", v.TTFT_BUCKETS),
        ("e2e", v.E2E_LATENCY, "Histogram of e2e request latency in seconds.",
         v.REQUEST_LATENCY_BUCKETS),
        ("prompt_hist", v.REQUEST_PROMPT_TOKENS, "Number of prefill tokens processed.",
         tokens_125),
        ("gen_hist", v.REQUEST_GENERATION_TOKENS, "Number of generation tokens processed.",
         tokens_125),
        ("max_tokens_hist", v.REQUEST_MAX_TOKENS,
         "Histogram of the max_tokens request parameter.", tokens_125),
    ]
    if legacy:
        return specs + [
            ("itl", v.LEGACY_TIME_PER_OUTPUT_TOKEN,
             "Histogram of time per output token in seconds.", v.TOKEN_LATENCY_BUCKETS),
            ("queue", v.LEGACY_TIME_IN_QUEUE,
             "Histogram of time the request spent in the queue in seconds.",
             v.REQUEST_LATENCY_BUCKETS)]
    return specs + [
        ("itl", v.INTER_TOKEN_LATENCY, "Histogram of inter-token latency in seconds.",
         v.TOKEN_LATENCY_BUCKETS),
        ("tpot", v.TIME_PER_OUTPUT_TOKEN,
         "Histogram of time_per_output_token_seconds per request.", v.TOKEN_LATENCY_BUCKETS),
        ("queue", v.QUEUE_TIME, "Histogram of time spent in WAITING phase.",
         v.REQUEST_LATENCY_BUCKETS),
        ("inference", v.INFERENCE_TIME, "Histogram of time spent in RUNNING phase.",
         v.REQUEST_LATENCY_BUCKETS),
        ("prefill", v.PREFILL_TIME, "Histogram of time spent in PREFILL phase.",
         v.REQUEST_LATENCY_BUCKETS),
        ("decode", v.DECODE_TIME, "Histogram of time spent in DECODE phase.",
         v.REQUEST_LATENCY_BUCKETS),
        ("iteration", v.ITERATION_TOKENS, "Histogram of number of tokens per engine_step.",
         v.ITERATION_TOKENS_BUCKETS)]


class PodMetricsExporter:
    """Histograms observed as requests progress; gauges and counters read from the engine
    at scrape time (so they are exact)."""

    def __init__(self, server: "SimServer", legacy: bool = False) -> None:
        self.server = server
        self.legacy = legacy
        self.labels = (server.model, "0")
        label_map = dict(zip(LABELS, self.labels))
        max_len = server.config.max_model_len
        self.histograms: list[_Histogram] = []

        def hist(name: str, doc: str, buckets: Iterable[float]) -> _Histogram:
            h = _Histogram(name, doc, tuple(buckets), label_map)
            self.histograms.append(h)
            return h

        for attr, name, doc, buckets in histogram_specs(legacy, max_len):
            setattr(self, attr, hist(name, doc, buckets))
        self._build_state_prefixes(label_map)
        self._lora_state: tuple = ()
        self._lora_ts = time.time()
        self._window: deque[tuple[float, int, int]] = deque()

    def _build_state_prefixes(self, label_map: dict[str, str]) -> None:
        lab = _label_text(label_map)
        table = _STATE_HEAD + (_STATE_LEGACY if self.legacy else _STATE_V1) + _STATE_TAIL
        self._scalars = [(_scalar_prefix(kind, name, doc, lab), value)
                         for kind, name, doc, value in table]
        success = _exposed_name("counter", v.REQUEST_SUCCESS)
        self._success_head = _header(success, "Count of successfully processed requests.",
                                     "counter")
        self._success_prefixes = [
            f"{success}{_label_text({**label_map, 'finished_reason': r})} "
            for r in _FINISHED_REASONS]
        self._lora_head = _header(v.LORA_REQUESTS_INFO, "Running stats on lora requests.",
                                  "gauge")
        self._cache_head = _header(v.CACHE_CONFIG_INFO,
                                   "Information of the LLMEngine CacheConfig", "gauge")

    # ---- observations ------------------------------------------------------------------
    def observe_arrival(self, sim: SimRequest) -> None:
        self.max_tokens_hist.observe(sim.max_tokens)

    def observe_step(self, res: StepResult) -> None:
        now = time.monotonic()
        self._window.append((now, res.num_prefill_tokens, len(res.outputs)))
        while self._window and self._window[0][0] < now - THROUGHPUT_WINDOW_S:
            self._window.popleft()
        if not self.legacy and (res.num_prefill_tokens or res.num_decode_seqs):
            self.iteration.observe(res.num_prefill_tokens + res.num_decode_seqs)

    def observe_first_token(self, sim: SimRequest) -> None:
        wall = self.server.to_wall
        self.ttft.observe(wall(sim.first_token - sim.arrival))

    def observe_itl(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def observe_finished(self, sim: SimRequest) -> None:
        wall = self.server.to_wall
        self.e2e.observe(wall(sim.finished_at - sim.arrival))
        self.prompt_hist.observe(sim.num_prompt)
        self.gen_hist.observe(sim.num_generated)
        sched = sim.first_scheduled if sim.first_scheduled is not None else sim.arrival
        self.queue.observe(wall(sched - sim.arrival))
        if self.legacy:
            return
        first = sim.first_token if sim.first_token is not None else sim.finished_at
        self.inference.observe(wall(sim.finished_at - sched))
        self.prefill.observe(wall(first - sched))
        self.decode.observe(wall(sim.finished_at - first))
        if sim.num_generated > 1:
            self.tpot.observe(wall(sim.finished_at - first) / (sim.num_generated - 1))

    # ---- exposition --------------------------------------------------------------------
    def render(self) -> bytes:
        """The page in Prometheus text format 0.0.4, histograms first, then the engine's
        gauges and counters (prometheus_client's registration order)."""
        out: list[str] = []
        created = _use_created()
        for h in self.histograms:
            h.render(out, created)
        self._render_state(out)
        return "".join(out).encode("utf-8")

    def _render_state(self, out: list[str]) -> None:
        srv = self.server
        st = srv.engine.stats()
        tps = self.throughput() if self.legacy else (0.0, 0.0)
        for prefix, value in self._scalars:
            out.append(f"{prefix}{floatToGoString(value(st, tps))}\n")
        out.append(self._success_head)
        for prefix, reason in zip(self._success_prefixes, _FINISHED_REASONS):
            out.append(f"{prefix}{floatToGoString(st.finished.get(reason, 0))}\n")
        lora = _label_text({"max_lora": str(st.max_loras),
                            "running_lora_adapters": ",".join(st.running_adapters),
                            "waiting_lora_adapters": ",".join(st.waiting_adapters)})
        ts = self.lora_info(st.running_adapters, st.waiting_adapters)
        out.append(f"{self._lora_head}{v.LORA_REQUESTS_INFO}{lora} {floatToGoString(ts)}\n")
        cfg = srv.config
        util = srv.options.gpu_memory_utilization or srv.profile.gpu_memory_utilization
        cache = _label_text(dict(zip(_CACHE_LABELS, (
            str(cfg.block_size), "auto", str(cfg.enable_prefix_caching), str(util), "0",
            str(cfg.num_gpu_blocks)))))
        out.append(f"{self._cache_head}{v.CACHE_CONFIG_INFO}{cache} 1.0\n")

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
