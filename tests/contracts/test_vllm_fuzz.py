"""Property tests of parse_metrics: random mutations of valid pages never raise anything but
VllmParseError, and generated valid pages parse to exactly what prometheus_client reads."""

from __future__ import annotations

import math
import os
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from llmtraffic.contracts import vllm
from llmtraffic.contracts.store import Histogram, PodMetrics
from llmtraffic.contracts.vllm import VllmParseError, parse_metrics
from tests.contracts.test_vllm import assert_same, pages_for_tests, reference
from tests.fixtures import vllm_page

#: Examples per property; raise it for a longer local run (e.g. LLMTRAFFIC_FUZZ_EXAMPLES=5000).
_EXAMPLES = int(os.environ.get("LLMTRAFFIC_FUZZ_EXAMPLES", "200"))
_PAGES = [p.encode() for p in pages_for_tests()]
_TOKENS = [b'"', b"{", b"}", b"\\", b"\n", b"=", b",", b" ", b"\t", b"#", b'le="', b"NaN",
           b"+Inf", b"-Inf", b"\xff", b"\xc3", b"vllm:", b"_total", b"_bucket", b"1e308",
           b"# EOF\n", b"\r\n", b"\x00", b'model_name="', b"\\n", b'\\"', b"1_0", b"\x0c",
           b' # {trace_id="a_b"} 1.5']
_FAMILIES = sorted({*vllm.READ_GAUGES, *vllm.READ_COUNTERS, *vllm.READ_HISTOGRAMS,
                    vllm.LORA_REQUESTS_INFO, vllm.CACHE_CONFIG_INFO})

_mutation = st.tuples(
    st.sampled_from(["insert", "delete", "replace", "dup_line", "drop_line", "swap_lines",
                     "truncate"]),
    st.floats(0.0, 1.0), st.integers(1, 40),
    st.one_of(st.sampled_from(_TOKENS), st.binary(min_size=1, max_size=12)))


def _mutate(page: bytes, mutations: list) -> bytes:
    data = bytearray(page)
    for kind, where, size, payload in mutations:
        at = int(where * len(data))
        if kind == "insert":
            data[at:at] = payload
        elif kind == "delete":
            del data[at:at + size]
        elif kind == "replace":
            data[at:at + len(payload)] = payload
        elif kind == "truncate":
            del data[at:]
        else:
            lines = bytes(data).split(b"\n")
            i = min(int(where * len(lines)), len(lines) - 1)
            j = (i + size) % len(lines)
            if kind == "dup_line":
                lines.insert(j, lines[i])
            elif kind == "drop_line":
                del lines[i]
            else:
                lines[i], lines[j] = lines[j], lines[i]
            data = bytearray(b"\n".join(lines))
    return bytes(data)


def _well_formed(m: PodMetrics) -> None:
    for name in ("running", "waiting", "swapped", "kv_usage", "prefix_queries", "prefix_hits",
                 "prompt_tokens", "generation_tokens", "preemptions"):
        assert isinstance(getattr(m, name), float), name
    assert all(isinstance(a, str) and a for a in m.running_adapters + m.waiting_adapters)
    assert all(isinstance(x, str) for x in m.models) and list(m.models) == sorted(m.models)
    assert isinstance(m.max_lora, int) and isinstance(m.block_size, int)
    assert isinstance(m.bad_lines, int) and m.bad_lines >= 0
    for h in (m.ttft, m.queue_time):
        if h is not None:
            assert isinstance(h, Histogram) and len(h.buckets) == len(h.counts)
            assert list(h.buckets) == sorted(h.buckets) and not any(map(math.isnan, h.buckets))


def _prometheus_client_accepts(text: str) -> bool:
    try:
        for _ in text_string_to_metric_families(text):
            pass
    except Exception:  # noqa: BLE001 - any refusal means "not comparable"
        return False
    return True


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(page=st.sampled_from(_PAGES), mutations=st.lists(_mutation, min_size=1, max_size=6),
       as_text=st.booleans())
def test_mutated_pages_raise_only_vllm_parse_error(page: bytes, mutations: list,
                                                   as_text: bool) -> None:
    broken = _mutate(page, mutations)
    arg: bytes | str = broken.decode("utf-8", "replace") if as_text else broken
    try:
        got = parse_metrics(arg)
    except VllmParseError:
        return
    _well_formed(got)
    # where both parsers accept every line, they must agree
    try:
        text = broken.decode("utf-8")
    except UnicodeDecodeError:
        return
    if got.bad_lines == 0 and _prometheus_client_accepts(text):
        assert_same(got, reference(text))


_label_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12) | \
    st.text('"\\\n{},=# \tab', max_size=12)


@st.composite
def _pages(draw: st.DrawFn) -> str:
    engines = draw(st.lists(st.sampled_from(["0", "1", "2", "3"]), min_size=1, max_size=3,
                            unique=True))
    page = vllm_page(seed=draw(st.integers(0, 10_000)), engines=tuple(engines),
                     legacy=draw(st.booleans()), model=draw(_label_text),
                     omit=frozenset(draw(st.lists(st.sampled_from(_FAMILIES), max_size=4))),
                     nan=draw(st.booleans()), lora_series=draw(st.integers(0, 4)),
                     process_metrics=False).decode()
    rng = random.Random(draw(st.integers(0, 2**32)))
    lines = []
    for line in page.split("\n"):  # comments, blank lines and timestamps where allowed
        if rng.random() < 0.05:
            lines.append(rng.choice(["", "# a comment", "#", "  ", "# HELP other_metric x"]))
        if line and not line.startswith("#") and rng.random() < 0.2:
            line += f" {rng.randrange(0, 2**42)}"
        lines.append(line)
    if draw(st.booleans()):
        lines.append("# EOF")
    return "\n".join(lines)


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_pages())
def test_generated_pages_equal_prometheus_client(text: str) -> None:
    try:
        got = parse_metrics(text)
    except VllmParseError:
        # only when every family we read was omitted
        assert reference(text) == PodMetrics(legacy=reference(text).legacy)
        return
    assert got.bad_lines == 0
    assert_same(got, reference(text))
