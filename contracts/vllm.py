"""vLLM's /metrics page described once: one table of its families (name, kind, help, labels,
buckets, generation V1 / legacy V0 and which V1 name replaced a legacy one), and the fast
parser that turns a pod's page into `PodMetrics` (plain pages scanned in C when
`contracts._pagescan` is built, the same result as the Python parser). The simulator's page, the dashboards and
the test pages are built from the same table."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from llmtraffic.contracts.store import Histogram, PodMetrics

#: "info" is what vLLM calls "syntactic sugar for a gauge permanently set to 1": exposed as a
#: gauge whose labels carry the facts (lora_requests_info's value is its update time).
Kind = Literal["gauge", "counter", "histogram", "info"]
#: "v1": only V1 engines (vLLM >= 0.12) expose it; "legacy": only pre-V1 images such as the
#: seed's llama2-with-lora:v0.2; "both": either. vLLM deprecates in X.Y, hides in X.Y+1 and
#: removes in X.Y+2, so a scraper reads both generations.
Generation = Literal["v1", "both", "legacy"]

#: Labels of a per-engine series: V1 adds `engine` (the data-parallel index as a string).
ENGINE_LABELS = ("model_name", "engine")
LEGACY_ENGINE_LABELS = ("model_name",)
#: lora_requests_info carries no model_name/engine; the adapter lists are comma-joined names.
LORA_INFO_LABELS = ("max_lora", "waiting_lora_adapters", "running_lora_adapters")
#: The cache_config_info labels our pages carry (vLLM adds many more); the parser reads
#: block_size and num_gpu_blocks.
CACHE_CONFIG_LABELS = ("block_size", "cache_dtype", "enable_prefix_caching",
                       "gpu_memory_utilization", "num_cpu_blocks", "num_gpu_blocks")
#: Values of request_success's `finished_reason` our pages carry.
FINISHED_REASONS = ("stop", "length", "abort")
#: Values of num_requests_waiting_by_reason's `reason`: waiting for scheduling capacity, or
#: deferred by a transient constraint (in practice: no free LoRA slot for the adapter).
WAITING_REASONS = ("capacity", "deferred")

# ---- histogram buckets exactly as vLLM declares them (FACTS.md) --------------------------
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TOKEN_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                         2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                           40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
#: A histogram's `buckets` when vLLM derives them from the engine: 1-2-5 up to max_model_len.
UP_TO_MAX_MODEL_LEN = "1-2-5 up to max_model_len"


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """vLLM's 1-2-5 buckets up to `max_value` (request_prompt_tokens & co), e.g. 100 ->
    [1, 2, 5, 10, 20, 50, 100]."""
    out: list[int] = []
    exponent = 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exponent
            if v > max_value:
                return out
            out.append(v)
        exponent += 1


_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "info": ("",),
             "histogram": ("_bucket", "_sum", "_count")}


@dataclass(frozen=True, slots=True)
class Family:
    """One family of vLLM's page as vLLM declares it."""

    name: str  # declared name; prometheus_client exposes a counter as <name>_total
    kind: Kind
    help: str  # vLLM's own documentation string
    labels: tuple[str, ...]  # in vLLM's declaration order; legacy engines lack `engine`
    buckets: tuple[float, ...] | str | None  # histograms only (or UP_TO_MAX_MODEL_LEN)
    generation: Generation
    replaced_by: str | None  # a legacy family: the V1 family that took its place

    @property
    def exposed_type(self) -> Literal["gauge", "counter", "histogram"]:
        """The `# TYPE` of the family on the wire."""
        return "gauge" if self.kind == "info" else self.kind

    def exposed(self) -> tuple[str, ...]:
        """Sample names vLLM puts on the wire for the family."""
        return tuple(self.name + suffix for suffix in _SUFFIXES[self.kind])

    def bounds(self, max_model_len: int) -> tuple[float, ...]:
        """The histogram's bucket bounds (without +Inf) for an engine of `max_model_len`."""
        if self.buckets == UP_TO_MAX_MODEL_LEN:
            return tuple(build_1_2_5_buckets(max_model_len))
        if not isinstance(self.buckets, tuple):
            raise ValueError(f"{self.name} is a {self.kind}, it has no buckets")
        return self.buckets


#: Every vLLM family we know, by declared name, V1 ones first (the table below).
FAMILIES: dict[str, Family] = {}


def _family(name: str, kind: Kind, help: str, *, labels: tuple[str, ...] = ENGINE_LABELS,
            buckets: tuple[float, ...] | str | None = None, generation: Generation = "both",
            replaced_by: str | None = None) -> str:
    """Add a row to FAMILIES; returns the name, so that each row also names its constant."""
    if name in FAMILIES or (kind == "histogram") != (buckets is not None):
        raise ValueError(f"vLLM family {name}: declared twice, or buckets on a non-histogram")
    FAMILIES[name] = Family(name, kind, help, labels, buckets, generation, replaced_by)
    return name


def families(*, legacy: bool) -> tuple[Family, ...]:
    """The families a V1 engine (or, with `legacy`, a pre-V1 one) exposes, table order."""
    left_out = "v1" if legacy else "legacy"
    return tuple(f for f in FAMILIES.values() if f.generation != left_out)


# ---- the table (vLLM 0.33 wheel and FACTS.md; help texts are vLLM's own) -----------------
NUM_REQUESTS_RUNNING = _family("vllm:num_requests_running", "gauge",
                               "Number of requests in model execution batches.")
NUM_REQUESTS_WAITING = _family("vllm:num_requests_waiting", "gauge",
                               "Number of requests waiting to be processed.")
NUM_REQUESTS_WAITING_BY_REASON = _family(
    "vllm:num_requests_waiting_by_reason", "gauge",
    "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for "
    "scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, KV "
    "transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
    labels=(*ENGINE_LABELS, "reason"), generation="v1")
KV_CACHE_USAGE = _family("vllm:kv_cache_usage_perc", "gauge",
                         "KV-cache usage. 1 means 100 percent usage.", generation="v1")
LORA_REQUESTS_INFO = _family("vllm:lora_requests_info", "info", "Running stats on lora requests.",
                             labels=LORA_INFO_LABELS)
CACHE_CONFIG_INFO = _family("vllm:cache_config_info", "info",
                            "Information of the LLMEngine CacheConfig",
                            labels=(*CACHE_CONFIG_LABELS, "engine"))
PREFIX_CACHE_QUERIES = _family("vllm:prefix_cache_queries", "counter",
                               "Prefix cache queries, in terms of number of queried tokens.",
                               generation="v1")
PREFIX_CACHE_HITS = _family("vllm:prefix_cache_hits", "counter",
                            "Prefix cache hits, in terms of number of cached tokens.",
                            generation="v1")
PROMPT_TOKENS = _family("vllm:prompt_tokens", "counter", "Number of prefill tokens processed.")
GENERATION_TOKENS = _family("vllm:generation_tokens", "counter",
                            "Number of generation tokens processed.")
REQUEST_SUCCESS = _family("vllm:request_success", "counter",
                          "Count of successfully processed requests.",
                          labels=(*ENGINE_LABELS, "finished_reason"))
NUM_PREEMPTIONS = _family("vllm:num_preemptions", "counter",
                          "Cumulative number of preemption from the engine.")
TTFT = _family("vllm:time_to_first_token_seconds", "histogram",
               "Histogram of time to first token in seconds.", buckets=TTFT_BUCKETS)
INTER_TOKEN_LATENCY = _family("vllm:inter_token_latency_seconds", "histogram",
                              "Histogram of inter-token latency in seconds.",
                              buckets=TOKEN_LATENCY_BUCKETS, generation="v1")
TIME_PER_OUTPUT_TOKEN = _family("vllm:request_time_per_output_token_seconds", "histogram",
                                "Histogram of time_per_output_token_seconds per request.",
                                buckets=TOKEN_LATENCY_BUCKETS, generation="v1")
E2E_LATENCY = _family("vllm:e2e_request_latency_seconds", "histogram",
                      "Histogram of e2e request latency in seconds.",
                      buckets=REQUEST_LATENCY_BUCKETS)
QUEUE_TIME = _family("vllm:request_queue_time_seconds", "histogram",
                     "Histogram of time spent in WAITING phase for request.",
                     buckets=REQUEST_LATENCY_BUCKETS)
INFERENCE_TIME = _family("vllm:request_inference_time_seconds", "histogram",
                         "Histogram of time spent in RUNNING phase for request.",
                         buckets=REQUEST_LATENCY_BUCKETS)
PREFILL_TIME = _family("vllm:request_prefill_time_seconds", "histogram",
                       "Histogram of time spent in PREFILL phase for request.",
                       buckets=REQUEST_LATENCY_BUCKETS)
DECODE_TIME = _family("vllm:request_decode_time_seconds", "histogram",
                      "Histogram of time spent in DECODE phase for request.",
                      buckets=REQUEST_LATENCY_BUCKETS)
REQUEST_PROMPT_TOKENS = _family("vllm:request_prompt_tokens", "histogram",
                                "Number of prefill tokens processed.",
                                buckets=UP_TO_MAX_MODEL_LEN)
REQUEST_GENERATION_TOKENS = _family("vllm:request_generation_tokens", "histogram",
                                    "Number of generation tokens processed.",
                                    buckets=UP_TO_MAX_MODEL_LEN)
REQUEST_MAX_TOKENS = _family("vllm:request_params_max_tokens", "histogram",
                             "Histogram of the max_tokens request parameter.",
                             buckets=UP_TO_MAX_MODEL_LEN)
ITERATION_TOKENS = _family("vllm:iteration_tokens_total", "histogram",
                           "Histogram of number of tokens per engine_step.",
                           buckets=ITERATION_TOKENS_BUCKETS)

# legacy (V0) names, still on older images; help texts as those images declared them
LEGACY_GPU_CACHE_USAGE = _family("vllm:gpu_cache_usage_perc", "gauge",
                                 "GPU KV-cache usage. 1 means 100 percent usage.",
                                 labels=LEGACY_ENGINE_LABELS, generation="legacy",
                                 replaced_by=KV_CACHE_USAGE)
LEGACY_CPU_CACHE_USAGE = _family("vllm:cpu_cache_usage_perc", "gauge",
                                 "CPU KV-cache usage. 1 means 100 percent usage.",
                                 labels=LEGACY_ENGINE_LABELS, generation="legacy")
LEGACY_NUM_REQUESTS_SWAPPED = _family("vllm:num_requests_swapped", "gauge",
                                      "Number of requests swapped to CPU.",
                                      labels=LEGACY_ENGINE_LABELS, generation="legacy")
LEGACY_PREFIX_CACHE_QUERIES = _family(
    "vllm:gpu_prefix_cache_queries", "counter",
    "GPU prefix cache queries, in terms of number of queried tokens.",
    labels=LEGACY_ENGINE_LABELS, generation="legacy", replaced_by=PREFIX_CACHE_QUERIES)
LEGACY_PREFIX_CACHE_HITS = _family(
    "vllm:gpu_prefix_cache_hits", "counter",
    "GPU prefix cache hits, in terms of number of cached tokens.",
    labels=LEGACY_ENGINE_LABELS, generation="legacy", replaced_by=PREFIX_CACHE_HITS)
LEGACY_TIME_PER_OUTPUT_TOKEN = _family(
    "vllm:time_per_output_token_seconds", "histogram",
    "Histogram of time per output token in seconds.", labels=LEGACY_ENGINE_LABELS,
    buckets=TOKEN_LATENCY_BUCKETS, generation="legacy", replaced_by=INTER_TOKEN_LATENCY)
LEGACY_TIME_IN_QUEUE = _family(
    "vllm:time_in_queue_requests", "histogram",
    "Histogram of time the request spent in the queue in seconds.",
    labels=LEGACY_ENGINE_LABELS, buckets=REQUEST_LATENCY_BUCKETS, generation="legacy",
    replaced_by=QUEUE_TIME)
# gone since ~0.7 with no V1 twin: read rate(prompt/generation_tokens_total) instead
LEGACY_AVG_PROMPT_THROUGHPUT = _family("vllm:avg_prompt_throughput_toks_per_s", "gauge",
                                       "Average prefill throughput in tokens/s.",
                                       labels=LEGACY_ENGINE_LABELS, generation="legacy")
LEGACY_AVG_GENERATION_THROUGHPUT = _family("vllm:avg_generation_throughput_toks_per_s", "gauge",
                                           "Average generation throughput in tokens/s.",
                                           labels=LEGACY_ENGINE_LABELS, generation="legacy")


# ---- the parser ----------------------------------------------------------------------------
# The page is scanned once. A line is skipped after one slice and one set lookup unless its
# first characters are those of a sample name we read; only the ~60 lines we need per engine
# get their labels and value parsed. Label separators ('",le="') and `le` values repeat on
# every page, so their validated forms are cached.


class VllmParseError(ValueError):
    """A /metrics page has no usable vLLM family at all, or is not text."""


# scalar slots: gauges and counters summed over engines (KV usage is averaged)
_RUNNING, _WAITING, _SWAPPED, _KV, _KV_LEGACY = range(5)
_PREFIX_Q, _PREFIX_H, _PREFIX_Q_LEGACY, _PREFIX_H_LEGACY = range(5, 9)
_PROMPT, _GENERATION, _PREEMPTIONS, _DEFERRED = range(9, 13)
_N_SCALARS = 13
# histogram slots
_H_TTFT, _H_QUEUE, _H_QUEUE_LEGACY = range(3)
_N_HISTS = 3
# what a sample name means: (kind, slot)
(_K_SCALAR, _K_REASON, _K_LORA, _K_CACHE, _K_BUCKET, _K_SUM, _K_COUNT, _K_MARK_V1,
 _K_MARK_LEGACY) = range(9)

#: Declared names of the families `parse_metrics` reads.
READ_GAUGES = {NUM_REQUESTS_RUNNING: _RUNNING, NUM_REQUESTS_WAITING: _WAITING,
               LEGACY_NUM_REQUESTS_SWAPPED: _SWAPPED, KV_CACHE_USAGE: _KV,
               LEGACY_GPU_CACHE_USAGE: _KV_LEGACY}
READ_COUNTERS = {PREFIX_CACHE_QUERIES: _PREFIX_Q, PREFIX_CACHE_HITS: _PREFIX_H,
                 LEGACY_PREFIX_CACHE_QUERIES: _PREFIX_Q_LEGACY,
                 LEGACY_PREFIX_CACHE_HITS: _PREFIX_H_LEGACY, PROMPT_TOKENS: _PROMPT,
                 GENERATION_TOKENS: _GENERATION, NUM_PREEMPTIONS: _PREEMPTIONS}
READ_HISTOGRAMS = {TTFT: _H_TTFT, QUEUE_TIME: _H_QUEUE, LEGACY_TIME_IN_QUEUE: _H_QUEUE_LEGACY}
#: Families whose presence alone marks the page as V1 / legacy (V0) naming: the table's
#: generation-only families, less the histograms we do not read (they would also tell, but
#: would cost a look at each of their buckets).
V1_ONLY_NAMES = tuple(f.name for f in FAMILIES.values() if f.generation == "v1"
                      and (f.kind != "histogram" or f.name in READ_HISTOGRAMS))
LEGACY_ONLY_NAMES = tuple(f.name for f in FAMILIES.values() if f.generation == "legacy"
                          and (f.kind != "histogram" or f.name in READ_HISTOGRAMS))


def _sample_table() -> dict[str, tuple[int, int]]:
    """Exposed sample name -> (kind, slot)."""
    table: dict[str, tuple[int, int]] = {}
    # markers first, so that the families we read overwrite them below
    for names, kind in ((V1_ONLY_NAMES, _K_MARK_V1), (LEGACY_ONLY_NAMES, _K_MARK_LEGACY)):
        for name in names:
            for suffix in ("", "_total"):
                table[name + suffix] = (kind, 0)
    for name, slot in READ_GAUGES.items():
        table[name] = (_K_SCALAR, slot)
    for name, slot in READ_COUNTERS.items():
        table[name + "_total"] = (_K_SCALAR, slot)  # how prometheus_client exposes a counter
        table[name] = (_K_SCALAR, slot)  # an untyped exposition without the suffix
    for name, slot in READ_HISTOGRAMS.items():
        table[name + "_bucket"] = (_K_BUCKET, slot)
        table[name + "_sum"] = (_K_SUM, slot)
        table[name + "_count"] = (_K_COUNT, slot)
    table[NUM_REQUESTS_WAITING_BY_REASON] = (_K_REASON, _DEFERRED)  # reason="deferred"
    table[LORA_REQUESTS_INFO] = (_K_LORA, 0)
    table[CACHE_CONFIG_INFO] = (_K_CACHE, 0)
    return table


_SAMPLES = _sample_table()
_PREFIX_LEN = min(map(len, _SAMPLES))  # every name we read is at least this long
try:  # the C scan of plain pages (contracts/csrc/pagescan.c), when built
    from llmtraffic.contracts import _pagescan
except ImportError:  # not built (no C compiler at install time): Python reads every page
    _scan = None
else:
    _pagescan.configure(_SAMPLES, (_K_SCALAR, _K_REASON, _K_LORA, _K_CACHE, _K_BUCKET, _K_SUM,
                                   _K_COUNT, _K_MARK_V1, _K_MARK_LEGACY), _N_SCALARS, _N_HISTS)
    _scan = _pagescan.scan
_PREFIXES = frozenset(name[:_PREFIX_LEN] for name in _SAMPLES)
_V1_SLOTS = (_KV, _PREFIX_Q, _PREFIX_H, _DEFERRED)
_LEGACY_SLOTS = (_SWAPPED, _KV_LEGACY, _PREFIX_Q_LEGACY, _PREFIX_H_LEGACY)
_ESCAPE = re.compile(r'\\[\\n"]')
_UNESCAPED = {"\\\\": "\\", "\\n": "\n", '\\"': '"'}
_NO_LABELS: dict[str, str] = {}
_BLANKS = frozenset(c for c in map(chr, range(0x3001)) if c.isspace())  # what str.strip strips
_CACHE_MAX = 4096  # bound on the separator / le caches (garbage pages must not grow them)
_KEYS: dict[str, str] = {}  # raw separator ',le=' -> label name 'le' ('' = invalid)
_BOUNDS: dict[str, float] = {}  # le label value -> float (NaN = invalid)


def _unescape(raw: str) -> str:
    return _ESCAPE.sub(lambda m: _UNESCAPED[m.group(0)], raw)


def _label_name_ok(name: str) -> bool:
    return name.isidentifier() and name.isascii()


def _learn_key(raw: str) -> str:
    """The label name in a separator such as ',le=' ('' when malformed), cached."""
    key = raw.strip()
    if key[:1] == "," and key[-1:] == "=":
        key = key[1:-1].strip()
        if not _label_name_ok(key):
            key = ""
    else:
        key = ""
    if len(_KEYS) < _CACHE_MAX:
        _KEYS[raw] = key
    return key


def _bound(le: str) -> float:
    """A bucket's upper bound; NaN when malformed."""
    try:
        bound = float(le) if "_" not in le else math.nan
    except ValueError:
        bound = math.nan
    if len(_BOUNDS) < _CACHE_MAX:
        _BOUNDS[le] = bound
    return bound


def _labels_fast(rest: str) -> tuple[dict[str, str], str] | None:
    """Labels of `rest` (the text after "{") when it holds no backslash: split on the quote
    character, parts alternate ',key=' separators and values until a separator holding the
    closing "}" (an exemplar after it may hold more quotes). Returns (labels, text after
    "}") or None when malformed."""
    parts = ("," + rest).split('"')
    last = len(parts) - 1
    labels: dict[str, str] = {}
    i = 0
    while True:
        sep = parts[i]
        closing = sep.lstrip()
        if closing[:1] == ",":  # a trailing comma, or the one prepended
            closing = closing[1:].lstrip()
        if closing[:1] == "}":
            tail = '"'.join(parts[i:])
            return labels, tail[tail.index("}") + 1:]
        key = _KEYS.get(sep)
        if key is None:
            key = _learn_key(sep)
        if not key or key in labels or i == last:
            return None
        labels[key] = parts[i + 1]
        i += 2
        if i > last:
            return None


def _labels_slow(rest: str) -> tuple[dict[str, str], str] | None:
    """Like `_labels_fast` for label values with escapes (\\" \\\\ \\n)."""
    labels: dict[str, str] = {}
    n = len(rest)
    i = 0
    while True:
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == "}":
            return labels, rest[i + 1:]
        eq = rest.find("=", i)
        if eq < 0:
            return None
        key = rest[i:eq].strip()
        if not _label_name_ok(key) or key in labels:
            return None
        j = eq + 1
        while j < n and rest[j] in " \t":
            j += 1
        if j >= n or rest[j] != '"':
            return None
        j += 1
        start = j
        while j < n:
            c = rest[j]
            if c == "\\":
                j += 2
            elif c == '"':
                break
            else:
                j += 1
        if j >= n:
            return None
        labels[key] = _unescape(rest[start:j])
        i = j + 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == ",":
            i += 1
        elif i >= n or rest[i] != "}":
            return None


def _value(text: str) -> float | None:
    """The sample value of `text` ("<value> [timestamp] [# exemplar]"), None if malformed."""
    fields = text.split()
    if not fields or "_" in fields[0]:
        return None
    try:
        value = float(fields[0])
        if len(fields) > 1 and fields[1] != "#":
            float(fields[1])  # a timestamp: must be a number, otherwise ignored
            if len(fields) > 2 and fields[2] != "#":
                return None
    except ValueError:
        return None
    return value


def _name_end(line: str, brace: int) -> int:
    """Index of the space or tab ending the sample name (before `brace` if any), or -1."""
    stop = brace if brace >= 0 else len(line)
    space = line.find(" ", 0, stop)
    tab = line.find("\t", 0, stop)
    if tab >= 0 and (space < 0 or tab < space):
        return tab
    return space


def _to_int(text: str | None) -> int:
    if not text:
        return 0
    try:
        return int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            return 0
        return int(number) if math.isfinite(number) else 0


def _adapters(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    return tuple(a for a in (s.strip() for s in text.split(",")) if a)


class _Hist:
    __slots__ = ("buckets", "sum", "count", "has_count")

    def __init__(self) -> None:
        self.buckets: dict[float, float] = {}
        self.sum = 0.0
        self.count = 0.0
        self.has_count = False

    def build(self) -> Histogram:
        bounds = sorted(self.buckets)
        counts = [self.buckets[b] for b in bounds]
        if (not bounds or bounds[-1] != math.inf) and self.has_count:
            bounds.append(math.inf)
            counts.append(self.count)
        return Histogram(tuple(bounds), tuple(counts), self.sum, self.count)


class _Info:
    """What the info lines give: the lora_requests_info labels with the largest value (its
    update time), cache_config_info's block size and its blocks summed over engines."""
    __slots__ = ("lora", "stamp", "block_size", "num_gpu_blocks")

    def __init__(self) -> None:
        self.lora: dict[str, str] | None = None
        self.stamp = 0.0
        self.block_size = self.num_gpu_blocks = 0

    def take(self, is_lora: bool, value: float, labels: dict[str, str]) -> None:
        if is_lora:
            if self.lora is None or value > self.stamp or self.stamp != self.stamp:
                self.lora = labels
                self.stamp = value
        else:
            self.block_size = _to_int(labels.get("block_size")) or self.block_size
            self.num_gpu_blocks += _to_int(labels.get("num_gpu_blocks"))


def _decode(page: bytes | bytearray | memoryview | str) -> tuple[str, bool]:
    """(text, is_clean_utf8). Undecodable bytes become U+FFFD so one bad byte costs one line."""
    if isinstance(page, str):
        return page, True
    if not isinstance(page, (bytes, bytearray, memoryview)):
        raise VllmParseError(
            f"expected the bytes or str of a /metrics page, got {type(page).__name__}")
    raw = bytes(page)
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), False


def parse_metrics(page: bytes | str) -> PodMetrics:
    """Parse a vLLM /metrics page (Prometheus text format 0.0.4 or OpenMetrics) into
    `PodMetrics`, reading only the families the store needs, V1 or legacy names.

    With several engines (data parallel, label `engine`) gauges and counters are summed and
    KV usage is averaged; histograms are summed bucket by bucket; `cache_config_info`'s
    `num_gpu_blocks` is summed. V1 names win over legacy ones when a page has both.
    `vllm:lora_requests_info` contributes the series with the largest value (its update
    time). A malformed line of a family we read is skipped and counted in `bad_lines`.
    Raises VllmParseError when the page is not text or holds no family we read."""
    if _scan is not None and isinstance(page, (bytes, bytearray, memoryview)):
        scanned = _scan(page if type(page) is bytes else bytes(page))
        if scanned is not None:
            return _from_scan(*scanned)
    return parse_metrics_python(page)


def parse_metrics_python(page: bytes | str) -> PodMetrics:
    """`parse_metrics` in Python only, every page (the reference the C scan is held to)."""
    text, clean = _decode(page)
    table, prefixes, plen = _SAMPLES, _PREFIXES, _PREFIX_LEN
    keys_get, bounds_get = _KEYS.get, _BOUNDS.get
    sums = [0.0] * _N_SCALARS
    seen = [0] * _N_SCALARS
    hists: list[_Hist | None] = [None] * _N_HISTS
    models: set[str] = set()
    info = _Info()
    marks_v1 = marks_legacy = False
    usable = bad = 0

    for line in text.split("\n"):
        if line[:plen] not in prefixes:
            if line[:1] not in _BLANKS:
                continue
            line = line.strip()  # an indented line, as the Go and Python parsers allow
            if line[:plen] not in prefixes:
                continue
        # -- the sample name: up to "{" (usual case), or a space / tab
        brace = line.find("{")
        entry = table.get(line[:brace]) if brace > 0 else None
        if entry is not None:
            rest = line[brace + 1:]
            with_labels = True
        else:
            end = _name_end(line, brace)
            if end < 0:  # no separator at all: a bare name or a truncated line
                entry = table.get(line if brace < 0 else line[:brace])
                bad += entry is not None and entry[0] < _K_MARK_V1
                continue
            entry = table.get(line[:end])
            if entry is None:
                continue
            rest = line[end:].lstrip()
            with_labels = rest[:1] == "{"  # "name {labels} value" is allowed
            if with_labels:
                rest = rest[1:]
        kind, slot = entry
        if kind >= _K_MARK_V1:
            if kind == _K_MARK_V1:
                marks_v1 = True
            else:
                marks_legacy = True
            continue
        # -- labels (inlined `_labels_fast` for the common case) and value
        if not with_labels:
            labels = _NO_LABELS
        elif "\\" in rest:
            parsed = _labels_slow(rest)
            if parsed is None:
                bad += 1
                continue
            labels, rest = parsed
        else:
            parts = ("," + rest).split('"')
            last = len(parts) - 1
            if last & 1 or not last:
                parsed = _labels_fast(rest)
                if parsed is None:
                    bad += 1
                    continue
                labels, rest = parsed
            else:
                raw = parts[0:last:2]
                names = list(map(keys_get, raw))
                if None in names:
                    names = [keys_get(r) or _learn_key(r) for r in raw]
                labels = dict(zip(names, parts[1:last:2]))
                tail = parts[last]
                if tail[:1] == "}" and len(labels) == len(names) and "" not in labels:
                    rest = tail[1:]
                else:  # a bad or duplicate label name, or text before "}": the careful way
                    parsed = _labels_fast(rest)
                    if parsed is None:
                        bad += 1
                        continue
                    labels, rest = parsed
        try:  # float() also reads "1_000": leave anything with "_" to _value
            value = float(rest) if "_" not in rest else _value(rest)
        except ValueError:
            value = _value(rest)  # a timestamp or an exemplar follows, or garbage
        if value is None:
            bad += 1
            continue

        # -- accumulate
        if kind == _K_SCALAR:
            sums[slot] += value
            seen[slot] += 1
        elif kind == _K_REASON:
            if labels.get("reason") == "deferred":
                sums[slot] += value
                seen[slot] += 1
        elif kind == _K_BUCKET:
            le = labels.get("le")
            bound = bounds_get(le) if le is not None else math.nan
            if bound is None:
                bound = _bound(le)  # type: ignore[arg-type]
            if bound != bound:  # no or malformed le
                bad += 1
                continue
            h = hists[slot]
            if h is None:
                h = hists[slot] = _Hist()
            h.buckets[bound] = h.buckets.get(bound, 0.0) + value
        elif kind == _K_SUM or kind == _K_COUNT:
            h = hists[slot]
            if h is None:
                h = hists[slot] = _Hist()
            if kind == _K_SUM:
                h.sum += value
            else:
                h.count += value
                h.has_count = True
        else:  # _K_LORA, _K_CACHE
            info.take(kind == _K_LORA, value, labels)
        usable += 1
        model = labels.get("model_name")
        if model is not None:
            models.add(model)

    if not usable:
        raise VllmParseError(_nothing_usable(text, clean))
    return _build(sums, seen, hists, info, models, marks_v1, marks_legacy, bad)


def _from_scan(sums: list[float], seen: list[int],
               scanned: list[tuple[dict[float, float], float, float, bool] | None],
               infos: list[tuple[bool, float, dict[str, str]]], models: set[str],
               marks_v1: bool, marks_legacy: bool) -> PodMetrics:
    """PodMetrics from what the C scan accumulated (`_pagescan.scan`'s tuple)."""
    hists: list[_Hist | None] = []
    for got in scanned:
        h = None
        if got is not None:
            h = _Hist()
            h.buckets, h.sum, h.count, h.has_count = got
        hists.append(h)
    info = _Info()
    for is_lora, value, labels in infos:
        info.take(is_lora, value, labels)
    return _build(sums, seen, hists, info, models, marks_v1, marks_legacy, 0)


def _nothing_usable(text: str, clean: bool) -> str:
    if not clean or "\x00" in text:
        return ("the /metrics page is not text (not UTF-8, or binary); expected the "
                "Prometheus text format")
    first = next((ln.strip() for ln in text.split("\n", 50) if ln.strip()), "")
    return (f"no vLLM metric family in the /metrics page (looked for {NUM_REQUESTS_RUNNING}, "
            f"{KV_CACHE_USAGE}, {LEGACY_GPU_CACHE_USAGE}, {TTFT} and more); is the target a "
            f"vLLM server? first line: {first[:120]!r}")


def _build(sums: list[float], seen: list[int], hists: list[_Hist | None], info: _Info,
           models: set[str], marks_v1: bool, marks_legacy: bool, bad: int) -> PodMetrics:
    """Fold the accumulated samples into PodMetrics: V1 names win over legacy ones."""
    lora = info.lora if info.lora is not None else _NO_LABELS
    kv = _KV if seen[_KV] else _KV_LEGACY
    prefix_q, prefix_h = ((_PREFIX_Q, _PREFIX_H) if seen[_PREFIX_Q] or seen[_PREFIX_H]
                          else (_PREFIX_Q_LEGACY, _PREFIX_H_LEGACY))
    ttft = hists[_H_TTFT]
    queue = hists[_H_QUEUE] or hists[_H_QUEUE_LEGACY]
    marks_v1 = marks_v1 or any(seen[s] for s in _V1_SLOTS)
    marks_legacy = (marks_legacy or any(seen[s] for s in _LEGACY_SLOTS)
                    or hists[_H_QUEUE_LEGACY] is not None)
    return PodMetrics(
        running=sums[_RUNNING],
        waiting=sums[_WAITING],
        waiting_deferred=sums[_DEFERRED],
        swapped=sums[_SWAPPED],
        kv_usage=sums[kv] / seen[kv] if seen[kv] else 0.0,
        running_adapters=_adapters(lora.get("running_lora_adapters")),
        waiting_adapters=_adapters(lora.get("waiting_lora_adapters")),
        max_lora=_to_int(lora.get("max_lora")),
        prefix_queries=sums[prefix_q],
        prefix_hits=sums[prefix_h],
        prompt_tokens=sums[_PROMPT],
        generation_tokens=sums[_GENERATION],
        preemptions=sums[_PREEMPTIONS],
        ttft=ttft.build() if ttft is not None else None,
        queue_time=queue.build() if queue is not None else None,
        block_size=info.block_size,
        num_gpu_blocks=info.num_gpu_blocks,
        models=tuple(sorted(models)),
        legacy=marks_legacy and not marks_v1,
        bad_lines=bad,
    )
