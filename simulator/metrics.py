"""A simulated pod's /metrics page under vLLM's own names (V1, or the legacy V0 names of
older images), written as text byte for byte the way prometheus_client's generate_latest
writes vLLM's declarations (pods share one process, so a scrape must cost little)."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque
from itertools import accumulate
from operator import add
from typing import Callable, Protocol, Sequence

from prometheus_client import metrics as _pc_metrics
from prometheus_client.utils import INF, floatToGoString

from llmtraffic.contracts import vllm as v
from llmtraffic.simulator.engine import EngineConfig, EngineStats, SimRequest, StepResult

#: Every per-engine family carries V1's labels, on legacy pages too; cache_config_info has
#: `CACHE_CONFIG_LABELS` without `engine` (the simulator's page as it has always been).
LABELS = v.ENGINE_LABELS
THROUGHPUT_WINDOW_S = 10.0  # legacy avg_*_throughput gauges average over this window
#: lora_requests_info label sets kept on the page (vLLM keeps every one it ever set; the
#: newest value is the state, so older ones only need to linger, not to pile up forever).
LORA_SETS_KEPT = 64


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


class _Utilization(Protocol):
    @property
    def gpu_memory_utilization(self) -> float | None: ...


class _Engine(Protocol):
    def stats(self) -> EngineStats: ...


class MeteredPod(Protocol):
    """What the page reads from its pod (a `server.SimServer`)."""

    @property
    def model(self) -> str: ...
    @property
    def config(self) -> EngineConfig: ...
    @property
    def engine(self) -> _Engine: ...
    @property
    def options(self) -> _Utilization: ...  # the pod's --gpu-memory-utilization, if given
    @property
    def profile(self) -> _Utilization: ...  # else its profile's

    def to_wall(self, virtual_seconds: float) -> float: ...


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


# (vLLM name, value from the engine's stats and the (prompt, generation) throughput); kind
# and help come from the table in contracts/vllm.py
_Value = Callable[[EngineStats, tuple[float, float]], float]
_STATE_HEAD: tuple[tuple[str, _Value], ...] = (
    (v.NUM_REQUESTS_RUNNING, lambda st, tps: st.num_running),
    (v.NUM_REQUESTS_WAITING, lambda st, tps: st.num_waiting),
)
_STATE_LEGACY: tuple[tuple[str, _Value], ...] = (
    (v.LEGACY_NUM_REQUESTS_SWAPPED, lambda st, tps: 0),
    (v.LEGACY_GPU_CACHE_USAGE, lambda st, tps: st.kv_usage),
    (v.LEGACY_CPU_CACHE_USAGE, lambda st, tps: 0.0),
    (v.LEGACY_AVG_PROMPT_THROUGHPUT, lambda st, tps: tps[0]),
    (v.LEGACY_AVG_GENERATION_THROUGHPUT, lambda st, tps: tps[1]),
    (v.LEGACY_PREFIX_CACHE_QUERIES, lambda st, tps: st.prefix_queries),
    (v.LEGACY_PREFIX_CACHE_HITS, lambda st, tps: st.prefix_hits),
)
_STATE_V1: tuple[tuple[str, _Value], ...] = (
    (v.KV_CACHE_USAGE, lambda st, tps: st.kv_usage),
    (v.PREFIX_CACHE_QUERIES, lambda st, tps: st.prefix_queries),
    (v.PREFIX_CACHE_HITS, lambda st, tps: st.prefix_hits),
)
_STATE_TAIL: tuple[tuple[str, _Value], ...] = (
    (v.NUM_PREEMPTIONS, lambda st, tps: st.preemptions),
    (v.PROMPT_TOKENS, lambda st, tps: st.prompt_tokens),
    (v.GENERATION_TOKENS, lambda st, tps: st.generation_tokens),
)
# (attribute, vLLM name) of each histogram a pod observes; a legacy pod observes fewer
_HISTOGRAMS_HEAD = (("ttft", v.TTFT), ("e2e", v.E2E_LATENCY),
                    ("prompt_hist", v.REQUEST_PROMPT_TOKENS),
                    ("gen_hist", v.REQUEST_GENERATION_TOKENS),
                    ("max_tokens_hist", v.REQUEST_MAX_TOKENS))
_HISTOGRAMS_LEGACY = (("itl", v.LEGACY_TIME_PER_OUTPUT_TOKEN), ("queue", v.LEGACY_TIME_IN_QUEUE))
_HISTOGRAMS_V1 = (("itl", v.INTER_TOKEN_LATENCY), ("tpot", v.TIME_PER_OUTPUT_TOKEN),
                  ("queue", v.QUEUE_TIME), ("inference", v.INFERENCE_TIME),
                  ("prefill", v.PREFILL_TIME), ("decode", v.DECODE_TIME),
                  ("iteration", v.ITERATION_TOKENS))


def _family_head(name: str) -> tuple[str, str]:
    """(# HELP and # TYPE lines, exposed sample name) of a gauge, counter or info family."""
    family = v.FAMILIES[name]
    exposed, = family.exposed()
    return _header(exposed, family.help, family.exposed_type), exposed


def _scalar_prefix(name: str, labels: str) -> str:
    """Header and sample name of a one-sample family, up to the value."""
    head, exposed = _family_head(name)
    return f"{head}{exposed}{labels} "


def histogram_specs(legacy: bool, max_model_len: int) -> \
        list[tuple[str, str, str, tuple[float, ...]]]:
    """(attribute, vLLM name, help, buckets) of every histogram a pod exposes, as vLLM
    declares them: V1 names, or the legacy V0 ones."""
    specs = _HISTOGRAMS_HEAD + (_HISTOGRAMS_LEGACY if legacy else _HISTOGRAMS_V1)
    return [(attr, name, v.FAMILIES[name].help, v.FAMILIES[name].bounds(max_model_len))
            for attr, name in specs]


class PodMetricsExporter:
    """Histograms observed as requests progress; gauges and counters read from the engine
    at scrape time (so they are exact)."""

    def __init__(self, server: MeteredPod, legacy: bool = False) -> None:
        self.server = server
        self.legacy = legacy
        self.labels = (server.model, "0")
        label_map = dict(zip(LABELS, self.labels))
        max_len = server.config.max_model_len
        self.histograms: list[_Histogram] = []
        for attr, name, doc, buckets in histogram_specs(legacy, max_len):
            h = _Histogram(name, doc, buckets, label_map)
            self.histograms.append(h)
            setattr(self, attr, h)
        self._build_state_prefixes(label_map)
        # (running, waiting) label values -> update time, in first-set order (as
        # prometheus_client keeps a gauge's children)
        self._lora_sets: dict[tuple[tuple[str, ...], tuple[str, ...]], float] = {}
        self._lora_state: tuple = ()
        self._window: deque[tuple[float, int, int]] = deque()

    def _build_state_prefixes(self, label_map: dict[str, str]) -> None:
        lab = _label_text(label_map)
        table = _STATE_HEAD + (_STATE_LEGACY if self.legacy else _STATE_V1) + _STATE_TAIL
        scalars = [(_scalar_prefix(name, lab), value) for name, value in table]
        n_head = len(_STATE_HEAD)  # by_reason follows num_requests_waiting, as on vLLM's page
        self._scalars_head, self._scalars_rest = scalars[:n_head], scalars[n_head:]
        head, reason = _family_head(v.NUM_REQUESTS_WAITING_BY_REASON)
        self._reason_prefixes = [f"{reason}{_label_text({**label_map, 'reason': r})} "
                                 for r in v.WAITING_REASONS]
        self._reason_prefixes[0] = head + self._reason_prefixes[0]
        self._success_head, success = _family_head(v.REQUEST_SUCCESS)
        self._success_prefixes = [
            f"{success}{_label_text({**label_map, 'finished_reason': r})} "
            for r in v.FINISHED_REASONS]
        self._lora_head, _ = _family_head(v.LORA_REQUESTS_INFO)
        self._cache_head, _ = _family_head(v.CACHE_CONFIG_INFO)

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
        for prefix, value in self._scalars_head:
            out.append(f"{prefix}{floatToGoString(value(st, tps))}\n")
        if not self.legacy:  # capacity + deferred = num_requests_waiting
            deferred = st.num_waiting_deferred
            for prefix, n in zip(self._reason_prefixes, (st.num_waiting - deferred, deferred)):
                out.append(f"{prefix}{floatToGoString(n)}\n")
        for prefix, value in self._scalars_rest:
            out.append(f"{prefix}{floatToGoString(value(st, tps))}\n")
        out.append(self._success_head)
        for prefix, reason in zip(self._success_prefixes, v.FINISHED_REASONS):
            out.append(f"{prefix}{floatToGoString(st.finished.get(reason, 0))}\n")
        self.lora_info(st.running_adapters, st.waiting_adapters)
        out.append(self._lora_head)
        for (running, waiting), ts in self._lora_sets.items():
            lora = _label_text({"max_lora": str(st.max_loras),
                                "running_lora_adapters": ",".join(running),
                                "waiting_lora_adapters": ",".join(waiting)})
            out.append(f"{v.LORA_REQUESTS_INFO}{lora} {floatToGoString(ts)}\n")
        cfg = srv.config
        util = srv.options.gpu_memory_utilization or srv.profile.gpu_memory_utilization
        cache = _label_text(dict(zip(v.CACHE_CONFIG_LABELS, (
            str(cfg.block_size), "auto", str(cfg.enable_prefix_caching), str(util), "0",
            str(cfg.num_gpu_blocks)))))
        out.append(f"{self._cache_head}{v.CACHE_CONFIG_INFO}{cache} 1.0\n")

    def lora_info(self, running: tuple[str, ...], waiting: tuple[str, ...]) -> float:
        """The update timestamp vLLM puts in lora_requests_info's value. Every label set
        once current stays on the page with its last time, as on vLLM's (the newest is the
        state); the least recently current go beyond `LORA_SETS_KEPT`."""
        state = (running, waiting)
        if state != self._lora_state or state not in self._lora_sets:
            self._lora_state = state
            self._lora_sets[state] = time.time()
            if len(self._lora_sets) > LORA_SETS_KEPT:
                del self._lora_sets[min(self._lora_sets, key=self._lora_sets.__getitem__)]
        return self._lora_sets[state]

    def throughput(self) -> tuple[float, float]:
        now = time.monotonic()
        recent = [w for w in self._window if w[0] >= now - THROUGHPUT_WINDOW_S]
        return (sum(w[1] for w in recent) / THROUGHPUT_WINDOW_S,
                sum(w[2] for w in recent) / THROUGHPUT_WINDOW_S)
