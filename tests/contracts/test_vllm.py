"""parse_metrics against prometheus_client's own parser (differential), on pages rendered by
prometheus_client like vLLM's, hand-written pages, and broken ones."""

from __future__ import annotations

import dataclasses
import gzip
import math
import random
from collections.abc import Iterable

import pytest
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llmtraffic.contracts import vllm
from llmtraffic.contracts.store import Histogram, PodMetrics
from llmtraffic.contracts.vllm import VllmParseError, parse_metrics
from tests.fixtures import vllm_page

# ---- the reference: the same folding rules on top of prometheus_client's parser -----------


def _to_int(text: str | None) -> int:
    if not text:
        return 0
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return int(float(text))
    except (ValueError, OverflowError):
        return 0


def _hist(samples: list, name: str) -> Histogram | None:
    mine = [s for s in samples if s.name in (name + "_bucket", name + "_sum", name + "_count")]
    if not mine:
        return None
    buckets: dict[float, float] = {}
    total = count = 0.0
    has_count = False
    for s in mine:
        if s.name.endswith("_bucket"):
            le = float(s.labels["le"])
            buckets[le] = buckets.get(le, 0.0) + s.value
        elif s.name.endswith("_sum"):
            total += s.value
        else:
            count += s.value
            has_count = True
    bounds = sorted(buckets)
    counts = [buckets[b] for b in bounds]
    if (not bounds or bounds[-1] != math.inf) and has_count:
        bounds.append(math.inf)
        counts.append(count)
    return Histogram(tuple(bounds), tuple(float(c) for c in counts), float(total), float(count))


def reference(text: str) -> PodMetrics:
    """What parse_metrics must return, computed from prometheus_client's parse of `text`."""
    samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]

    def values(*names: str) -> list[float]:
        return [float(s.value) for s in samples if s.name in names]

    def counter(name: str) -> list[float]:
        return values(name, name + "_total")

    kv = values(vllm.KV_CACHE_USAGE) or values(vllm.LEGACY_GPU_CACHE_USAGE)
    if counter(vllm.PREFIX_CACHE_QUERIES) or counter(vllm.PREFIX_CACHE_HITS):
        queries, hits = counter(vllm.PREFIX_CACHE_QUERIES), counter(vllm.PREFIX_CACHE_HITS)
    else:
        queries = counter(vllm.LEGACY_PREFIX_CACHE_QUERIES)
        hits = counter(vllm.LEGACY_PREFIX_CACHE_HITS)
    lora: dict[str, str] = {}
    stamp = None
    for s in samples:
        if s.name == vllm.LORA_REQUESTS_INFO and (stamp is None or s.value > stamp
                                                   or stamp != stamp):
            lora, stamp = s.labels, s.value
    block_size = num_gpu_blocks = 0
    for s in samples:
        if s.name == vllm.CACHE_CONFIG_INFO:
            block_size = _to_int(s.labels.get("block_size")) or block_size
            num_gpu_blocks += _to_int(s.labels.get("num_gpu_blocks"))
    read = {vllm.LORA_REQUESTS_INFO, vllm.CACHE_CONFIG_INFO, vllm.NUM_REQUESTS_WAITING_BY_REASON,
            *vllm.READ_GAUGES}
    read |= {n + sfx for n in vllm.READ_COUNTERS for sfx in ("", "_total")}
    read |= {n + sfx for n in vllm.READ_HISTOGRAMS for sfx in ("_bucket", "_sum", "_count")}
    models = {s.labels["model_name"] for s in samples if s.name in read and "model_name" in s.labels}
    names = {s.name for s in samples}
    v1 = any(n + sfx in names for n in vllm.V1_ONLY_NAMES for sfx in ("", "_total"))
    legacy = any(n + sfx in names for n in vllm.LEGACY_ONLY_NAMES for sfx in ("", "_total", "_count"))

    def adapters(key: str) -> tuple[str, ...]:
        return tuple(a.strip() for a in lora.get(key, "").split(",") if a.strip())

    return PodMetrics(
        running=sum(values(vllm.NUM_REQUESTS_RUNNING)),
        waiting=sum(values(vllm.NUM_REQUESTS_WAITING)),
        waiting_deferred=sum(float(s.value) for s in samples
                             if s.name == vllm.NUM_REQUESTS_WAITING_BY_REASON
                             and s.labels.get("reason") == "deferred"),
        swapped=sum(values(vllm.LEGACY_NUM_REQUESTS_SWAPPED)),
        kv_usage=sum(kv) / len(kv) if kv else 0.0,
        running_adapters=adapters("running_lora_adapters"),
        waiting_adapters=adapters("waiting_lora_adapters"),
        max_lora=_to_int(lora.get("max_lora")),
        prefix_queries=sum(queries),
        prefix_hits=sum(hits),
        prompt_tokens=sum(counter(vllm.PROMPT_TOKENS)),
        generation_tokens=sum(counter(vllm.GENERATION_TOKENS)),
        preemptions=sum(counter(vllm.NUM_PREEMPTIONS)),
        ttft=_hist(samples, vllm.TTFT),
        queue_time=_hist(samples, vllm.QUEUE_TIME) or _hist(samples, vllm.LEGACY_TIME_IN_QUEUE),
        block_size=block_size,
        num_gpu_blocks=num_gpu_blocks,
        models=tuple(sorted(models)),
        legacy=legacy and not v1,
    )


def _plain(value: object) -> object:
    """Dataclass -> nested tuples with NaN made comparable."""
    if dataclasses.is_dataclass(value):
        return tuple(_plain(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def assert_same(got: PodMetrics, want: PodMetrics) -> None:
    got_plain = _plain(dataclasses.replace(got, bad_lines=0))
    want_plain = _plain(dataclasses.replace(want, bad_lines=0))
    if got_plain != want_plain:
        fields = [f.name for f in dataclasses.fields(PodMetrics)]
        diff = {n: (g, w) for n, g, w in zip(fields, got_plain, want_plain) if g != w}  # type: ignore[call-overload]
        pytest.fail(f"parse_metrics differs from prometheus_client's parse: {diff}")


def check(text: str) -> PodMetrics:
    """parse_metrics(text) equals the reference, for str and bytes input, with no bad line."""
    got = parse_metrics(text)
    assert_same(got, reference(text))
    assert got.bad_lines == 0
    assert_same(parse_metrics(text.encode()), got)
    return got


# ---- pages rendered by prometheus_client the way vLLM declares its metrics ----------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("engines", [("0",), ("0", "1")])
@pytest.mark.parametrize("legacy", [False, True])
def test_rendered_pages_match_prometheus_client(seed: int, engines: tuple[str, ...],
                                                legacy: bool) -> None:
    got = check(vllm_page(seed=seed, engines=engines, legacy=legacy).decode())
    assert got.legacy is legacy
    assert got.models == ("meta-llama/Llama-2-7b-hf",)
    assert got.ttft is not None and got.ttft.buckets[-1] == math.inf
    assert got.ttft.buckets[:-1] == vllm.TTFT_BUCKETS
    assert got.queue_time is not None and got.queue_time.buckets[:-1] == \
        vllm.REQUEST_LATENCY_BUCKETS
    assert got.block_size == 16 and got.num_gpu_blocks > 0 and got.max_lora == 4


def test_two_engines_sum_counters_and_average_kv() -> None:
    page = vllm_page(seed=1, engines=("0", "1"), process_metrics=False).decode()
    per_engine: dict[str, dict[str, float]] = {"0": {}, "1": {}}
    for fam in text_string_to_metric_families(page):
        for s in fam.samples:
            if "engine" in s.labels and s.name in (vllm.KV_CACHE_USAGE, vllm.NUM_REQUESTS_RUNNING,
                                                    vllm.PROMPT_TOKENS + "_total"):
                per_engine[s.labels["engine"]][s.name] = s.value
    got = parse_metrics(page)
    e0, e1 = per_engine["0"], per_engine["1"]
    assert got.running == e0[vllm.NUM_REQUESTS_RUNNING] + e1[vllm.NUM_REQUESTS_RUNNING]
    assert got.prompt_tokens == e0[vllm.PROMPT_TOKENS + "_total"] + \
        e1[vllm.PROMPT_TOKENS + "_total"]
    assert got.kv_usage == pytest.approx((e0[vllm.KV_CACHE_USAGE] + e1[vllm.KV_CACHE_USAGE]) / 2)
    assert got.ttft is not None and got.ttft.count == got.ttft.counts[-1]


@pytest.mark.parametrize("model", ['say "hi"', "back\\slash", "two\nlines", 'all \\"\n\\n',
                                   "a,b=c}{ #", "ünïcödé 模型", ""])
def test_escaped_label_values(model: str) -> None:
    got = check(vllm_page(seed=3, model=model).decode())
    assert got.models == (model,)


def test_escaped_lora_adapter_names() -> None:
    reg = CollectorRegistry()
    g = Gauge(vllm.LORA_REQUESTS_INFO, "lora", ["max_lora", "running_lora_adapters",
                                                "waiting_lora_adapters"], registry=reg)
    g.labels("8", 'sql"lora,tweet\\sum', "a\nb").set(200.0)
    g.labels("2", "old", "").set(100.0)
    got = check(generate_latest(reg).decode())
    assert got.running_adapters == ('sql"lora', "tweet\\sum")
    assert got.waiting_adapters == ("a\nb",)
    assert got.max_lora == 8


@pytest.mark.parametrize("seed", range(3))
def test_nan_and_inf_values(seed: int) -> None:
    got = check(vllm_page(seed=seed, nan=True).decode())
    assert math.isnan(got.running) or math.isinf(got.running)


@pytest.mark.parametrize("omit", [
    {vllm.LORA_REQUESTS_INFO},
    {vllm.CACHE_CONFIG_INFO, vllm.TTFT},
    {vllm.QUEUE_TIME, vllm.KV_CACHE_USAGE, vllm.PREFIX_CACHE_HITS, vllm.PREFIX_CACHE_QUERIES},
    {vllm.NUM_REQUESTS_RUNNING, vllm.NUM_REQUESTS_WAITING, vllm.PROMPT_TOKENS,
     vllm.GENERATION_TOKENS, vllm.NUM_PREEMPTIONS},
])
def test_missing_families_take_defaults(omit: set[str]) -> None:
    got = check(vllm_page(seed=2, omit=frozenset(omit)).decode())
    default = PodMetrics()
    if vllm.LORA_REQUESTS_INFO in omit:
        assert (got.running_adapters, got.waiting_adapters, got.max_lora) == ((), (), 0)
    if vllm.TTFT in omit:
        assert got.ttft is None and got.block_size == 0 and got.num_gpu_blocks == 0
    if vllm.QUEUE_TIME in omit:
        assert got.queue_time is None and got.kv_usage == 0.0 and got.prefix_hits == 0.0
    if vllm.NUM_REQUESTS_RUNNING in omit:
        assert (got.running, got.waiting, got.prompt_tokens, got.preemptions) == \
            (default.running, default.waiting, default.prompt_tokens, default.preemptions)


def _lines(page: bytes) -> list[str]:
    return page.decode().split("\n")


def test_comments_blank_lines_timestamps_and_eof() -> None:
    rng = random.Random(5)
    out = []
    for line in _lines(vllm_page(seed=4, engines=("0", "1"))):
        if rng.random() < 0.2:
            out.append(rng.choice(["", "# just a comment", "#", "# HELP vllm:x text \\n more",
                                   "   ", "# TYPE"[:6] + "x", "#vllm:num_requests_running 99"]))
        if line and not line.startswith("#") and rng.random() < 0.5:
            line += f" {rng.randrange(1, 2**41)}"  # a timestamp in ms
        out.append(line)
    out.append("# EOF")
    check("\n".join(out))


def test_hand_written_page_go_style() -> None:
    """Untyped counters without _total, tabs, spaces before "{", trailing comma, CRLF,
    indentation, exemplars and an empty label set, as other exporters write them."""
    text = "\r\n".join([
        "vllm:num_requests_running\t3",
        "vllm:num_requests_running {engine=\"1\"} 2",
        "   vllm:num_requests_waiting{engine=\"0\",} 4",
        "vllm:num_requests_waiting{} 1",
        "vllm:num_requests_waiting_by_reason{reason=\"capacity\"} 100",
        "vllm:prompt_tokens 10",
        "vllm:generation_tokens_total{model_name=\"m\"} 7 1700000000000",
        "vllm:num_preemptions_total{model_name=\"m\"} 2 # {trace_id=\"a_b\"} 1.0 1700000000",
        "vllm:kv_cache_usage_perc{engine=\"0\"} 0.25",
        "vllm:kv_cache_usage_perc{engine=\"1\"} 0.75",
        "vllm:time_to_first_token_seconds_bucket{le=\"0.1\"} 1",
        "vllm:time_to_first_token_seconds_bucket{le=\"+Inf\"} 3",
        "vllm:time_to_first_token_seconds_sum 0.9",
        "vllm:time_to_first_token_seconds_count 3",
        "",
    ])
    got = check(text)
    assert (got.running, got.waiting, got.prompt_tokens, got.generation_tokens) == (5, 5, 10, 7)
    assert got.preemptions == 2
    assert got.kv_usage == 0.5
    assert got.ttft == Histogram((0.1, math.inf), (1.0, 3.0), 0.9, 3.0)
    assert got.models == ("m",)


def test_lora_series_with_largest_timestamp_wins() -> None:
    text = "\n".join(
        f'vllm:lora_requests_info{{max_lora="4",running_lora_adapters="{run}",'
        f'waiting_lora_adapters="{wait}"}} {stamp}'
        for run, wait, stamp in [("a", "", 1.7e9 + 1), ("b,c", "d", 1.7e9 + 3), ("e", "", 1.7e9)])
    got = check(text)
    assert (got.running_adapters, got.waiting_adapters) == (("b", "c"), ("d",))


def test_v1_names_win_over_legacy_when_both_present() -> None:
    text = "\n".join([
        'vllm:kv_cache_usage_perc{model_name="m"} 0.5',
        'vllm:gpu_cache_usage_perc{model_name="m"} 0.9',
        'vllm:prefix_cache_queries_total{model_name="m"} 100',
        'vllm:gpu_prefix_cache_queries_total{model_name="m"} 300',
        'vllm:gpu_prefix_cache_hits_total{model_name="m"} 200',
    ])
    got = check(text)
    assert (got.kv_usage, got.prefix_queries, got.prefix_hits, got.legacy) == (0.5, 100, 0, False)


def test_legacy_page_reads_v0_names() -> None:
    got = check(vllm_page(seed=7, legacy=True).decode())
    assert got.legacy and got.swapped >= 0 and got.prefix_queries > 0
    assert 0.0 <= got.kv_usage <= 1.0


# ---- broken pages -------------------------------------------------------------------------

_GARBAGE = [
    'vllm:num_requests_running{model_name="m" 3',  # unterminated label set
    'vllm:num_requests_running{model_name="m} 3',  # unterminated value
    'vllm:num_requests_running{model_name=m} 3',  # unquoted value
    'vllm:num_requests_running{model_name="m",model_name="n"} 3',  # duplicate label
    'vllm:num_requests_running{9bad="m"} 3',  # invalid label name
    "vllm:num_requests_running three",
    "vllm:num_requests_running 1_000",
    "vllm:num_requests_running",
    "vllm:num_requests_running 3 notatimestamp",
    'vllm:time_to_first_token_seconds_bucket{le="abc"} 1',
    'vllm:time_to_first_token_seconds_bucket{model_name="m"} 1',  # no le
    'vllm:time_to_first_token_seconds_bucket{le="NaN"} 1',
    'vllm:kv_cache_usage_perc{a="\\"} 0.5',  # escaped closing quote: unterminated
]
_IGNORED_GARBAGE = ["garbage", "}}}{{{", "\x7f\x00", "vllm:unknown_family{oops 1",
                    "other_exporter_metric{", 'vllm:num_requests_running_x{"} 1']


def test_garbage_lines_are_skipped_and_counted() -> None:
    clean = vllm_page(seed=8).decode()
    lines = clean.split("\n")
    rng = random.Random(8)
    for g in _GARBAGE + _IGNORED_GARBAGE:
        lines.insert(rng.randrange(len(lines)), g)
    got = parse_metrics("\n".join(lines))
    assert_same(got, reference(clean))
    assert got.bad_lines == len(_GARBAGE)


@pytest.mark.parametrize("page", [
    b"",
    b"\n\n",
    b"<html><body>502 Bad Gateway</body></html>",
    b'{"object": "error", "message": "not found"}',
    b"# HELP vllm:num_requests_running x\n# TYPE vllm:num_requests_running gauge\n",
    generate_latest(CollectorRegistry(auto_describe=True)),
    b'python_info{version="3.11"} 1\nprocess_open_fds 6\n',
    gzip.compress(vllm_page(seed=1)),
    bytes(range(256)) * 4,
    "\n".join(_GARBAGE).encode(),
])
def test_unusable_pages_raise_vllm_parse_error(page: bytes) -> None:
    with pytest.raises(VllmParseError) as err:
        parse_metrics(page)
    assert isinstance(err.value, ValueError)
    assert "vLLM" in str(err.value) or "not text" in str(err.value)


def test_binary_page_error_says_not_text() -> None:
    with pytest.raises(VllmParseError, match="not text"):
        parse_metrics(gzip.compress(vllm_page(seed=1)))


def test_wrong_input_type_raises_vllm_parse_error() -> None:
    with pytest.raises(VllmParseError, match="got int"):
        parse_metrics(42)  # type: ignore[arg-type]


def test_one_undecodable_byte_costs_one_line() -> None:
    page = vllm_page(seed=9, process_metrics=False)
    marker = b'vllm:num_requests_waiting{engine="0",model_name="'
    broken = page.replace(marker, marker[:-1] + b"\xff", 1)
    got = parse_metrics(broken)
    assert got.waiting == 0.0 and got.bad_lines == 1
    assert got.running == parse_metrics(page).running


def test_names_we_read_are_at_least_the_prefix_length() -> None:
    """The prefix filter is only sound if every name we read is at least that long."""
    names = list(vllm._SAMPLES)
    assert min(len(n) for n in names) == vllm._PREFIX_LEN
    assert all(n[:vllm._PREFIX_LEN] in vllm._PREFIXES for n in names)


def pages_for_tests() -> Iterable[str]:
    """A few valid pages, reused by the fuzz tests."""
    for seed, engines, legacy in [(0, ("0",), False), (1, ("0", "1"), False), (2, ("0",), True)]:
        yield vllm_page(seed=seed, engines=engines, legacy=legacy).decode()
