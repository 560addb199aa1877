"""The msgspec decoder (FastJsonParser) against JsonLineParser, line for line: the same record
(every field, its type and its exact value: 0.0 is not -0.0, 1 is not True), or the same error
(reason and message), and through the pipeline the same counts, parse errors and records
without tokens, whatever the lines: random objects over the mapping's keys and values of every
kind, raw JSON texts with duplicate keys, spaces around "-", escapes, non-ASCII, huge numbers
and nesting, in sequences that switch layouts (property-based, hypothesis)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from llmtraffic.contracts.record import FIELD_NAMES, LLMRecord
from llmtraffic.contracts.tokens import TokenCounters
from llmtraffic.exporter.accesslog import (PRESETS, FieldMapping, JsonLineParser, ParseError,
                                           make_parser)
from llmtraffic.exporter.collector import ExporterStats
from llmtraffic.exporter.fastjson import FastJsonParser, native_finish
from llmtraffic.exporter.pipeline import Pipeline

ALL_KEYS = sorted({k for keys in PRESETS["all"].values() for k in keys})
SCALARS = (st.none() | st.sampled_from(["-", "", "x", "200", "0", "-0", "-5", " 7 ", "1_000",
                                        "1e3", "1.0", "nan", "inf", "null", "true", "True",
                                        "TRUE", "false", "1", "9" * 30, "é", "\u00a7pool"])
           | st.booleans() | st.integers(-5, 2**64 - 1) | st.floats(allow_nan=False)
           | st.sampled_from([-0.0, 0.0, 1.5, 1e300, 2**53, 2**53 + 1, 2**63, 2**63 - 1])
           | st.text(max_size=5))
VALUES = SCALARS | st.lists(st.integers(-9, 9), max_size=2) | st.dictionaries(
    st.text(max_size=2), st.integers(0, 3), max_size=1)
KEYS = st.sampled_from(ALL_KEYS) | st.sampled_from(["x", "upstream_local_address", "\u00a7pool",
                                                    "pool"]) | st.text(max_size=3)
OBJECTS = st.dictionaries(KEYS, VALUES, max_size=12)
#: JSON texts orjson.dumps never writes: spaces, duplicates, escapes, literals at the edge
RAW = st.sampled_from([
    b'{"request_model": "-", "request_prompt_tokens": "5"}',
    b'{"request_model":"m","request_model":null}',
    b'{"request_model":"m","request_prompt_tokens":"5","request_prompt_tokens":"-"}',
    b'{"request_model":"m","model":"n"}', b'{"model":"n","request_model":"m"}',
    b'{"request_model":"\\u006d","x":"\\ud800"}', b'{"request_model":"m","x":"\\udc00"}',
    b'{"request_model":"m","x":1e400}', b'{"request_model":"m","x":' + b"9" * 400 + b"}",
    b'{"request_model":"m","x":[' * 3 + b"]" * 3 + b"}", b'{"request_model":"m\xff"}',
    b'{"request_model":"m","\\u00a7pool":"p"}', b'{"request_model":"m","\\u00a7pool":null}',
    b'{"request_model":"m","response_code":"200","duration":-0}',
    b'{"request_model":"m","duration":"-0"}', b'{"request_model":"m","stream":"true"}',
    b'\t{"request_model":"m"} ', b'{"request_model":"m"}x', b"", b"  ", b"[]", b'"s"',
    b'{"request_model":"m","bytes_sent":1.0}', b'{"request_model":"m","bytes_sent":2e0}',
    b'{"request_model":"m","response_code":' + str(2**64).encode() + b"}",
    b'{"request_model":"m","ttft_ms":"1e999"}', b'{"request_model":"a\\"b","x":"\\"-\\""}',
    b'{"x":"a\\":"-"","request_model":"m"}',
])


def outcome(parser, line: bytes):
    try:
        rec = parser.parse(line)
    except ParseError as e:
        return ("error", e.reason, str(e))
    return tuple(repr(getattr(rec, f)) for f in FIELD_NAMES)


def lines_of(objs: list, raws: list) -> list[bytes]:
    out = [orjson.dumps(o) for o in objs]
    for i, raw in enumerate(raws):
        out.insert(i * 3 % (len(out) + 1), raw)
    return out


LONG_LIVED = FastJsonParser()  # learns layouts across examples, up to its cap


@settings(max_examples=400, deadline=None)
@given(st.lists(OBJECTS, min_size=1, max_size=8), st.lists(RAW, max_size=4))
def test_records_and_errors_are_the_reference_parsers(objs, raws) -> None:
    reference, fresh = JsonLineParser(), FastJsonParser()
    for line in lines_of(objs, raws) * 2:  # the second round takes the learned layouts
        want = outcome(reference, line)
        assert outcome(fresh, line) == want, line
        assert outcome(LONG_LIVED, line) == want, line


BUILT = [True] if native_finish is None else [True, False]  # C finisher, then Python only


@settings(max_examples=300, deadline=None)
@given(st.lists(OBJECTS, min_size=1, max_size=8), st.lists(RAW, max_size=4))
def test_a_batch_is_what_each_line_makes(objs, raws) -> None:
    """parse_many: the reference's records in order, its errors given to `failed`, and the
    lines the records came from (layouts learned and switched inside a batch), with the C
    finisher (when built) and without it."""
    lines = lines_of(objs, raws) * 2
    want = [outcome(JsonLineParser(), line) for line in lines]
    for parser in (*(FastJsonParser(native=n) for n in BUILT), LONG_LIVED):
        errors: list[str] = []
        recs, kept = parser.parse_many(lines, errors.append)
        assert [tuple(repr(getattr(r, f)) for f in FIELD_NAMES) for r in recs] == \
            [w for w in want if w[0] != "error"]
        assert errors == [w[1] for w in want if w[0] == "error"]
        assert kept == [line for line, w in zip(lines, want) if w[0] != "error"]


@settings(max_examples=150, deadline=None)
@given(st.lists(OBJECTS, min_size=1, max_size=10), st.lists(RAW, max_size=3))
def test_counts_through_the_pipeline_are_the_reference_parsers(objs, raws) -> None:
    lines = lines_of(objs, raws) * 3
    results = []
    for parser in (JsonLineParser(), *(FastJsonParser(native=n) for n in BUILT)):
        counters, stats = TokenCounters(dimensions=("model", "response_code")), ExporterStats()
        Pipeline(parser, counters, stats).lines(lines)
        results.append((counters.state(), stats.parse_errors, stats.without_tokens))
    assert all(r == results[0] for r in results)


@pytest.mark.skipif(native_finish is None, reason="contracts._records not built")
def test_the_c_finisher_takes_plain_digits_and_dashes_only() -> None:
    """Digit strings up to 15 digits become numbers, "-" None; whatever int() or float()
    might read differently (signs, spaces, other digits, longer) is left to Python."""
    texts = ["0", "007", "9" * 15, "9" * 16, "-", "", "+1", "-0", " 1", "1_0", "\u0663",
             "1.5", "1e3", "--"]
    recs = [LLMRecord(prompt_tokens=t, duration_ms=t, response_flags=t) for t in texts]
    recs.append(LLMRecord(prompt_tokens=5, duration_ms=2.5, response_flags="UF"))
    left = native_finish(recs, 1, ("prompt_tokens",), ("duration_ms",), ("response_flags",))
    assert [texts[k] for k in left] == texts[3:4] + texts[5:]
    assert recs[0].prompt_tokens == "0"  # before start: untouched
    taken = {texts[k]: recs[k] for k in range(1, len(texts)) if k not in left}
    assert {t: (r.prompt_tokens, r.duration_ms, r.response_flags) for t, r in taken.items()} \
        == {"007": (7, 7.0, "007"), "9" * 15: (10**15 - 1, 1e15 - 1, "9" * 15),
            "-": (None, None, None)}
    assert type(taken["007"].duration_ms) is float and type(taken["007"].prompt_tokens) is int
    assert (recs[-1].prompt_tokens, recs[-1].duration_ms, recs[-1].response_flags) == \
        (5, 2.5, "UF")


def test_istio_lines_take_the_fast_path_and_stay_exact() -> None:
    from bench.exporter_throughput import generate

    import tempfile, os
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "a.log")
        generate(path, 3000, seed=3)
        lines = open(path, "rb").read().splitlines()
    fast, slow = FastJsonParser(), JsonLineParser()
    calls = {"slow": 0}
    reference = fast._slow

    def counted(line: bytes):
        calls["slow"] += 1
        return reference(line)
    fast._slow = counted
    for line in lines:
        assert outcome(fast, line) == outcome(slow, line)
    assert calls["slow"] <= 2 and len(fast._layouts) <= 2  # learned once, then decoded in C


def test_every_json_format_but_higress_gets_the_fast_decoder() -> None:
    assert isinstance(make_parser(), FastJsonParser)
    assert isinstance(make_parser("envoy-ai-gateway"), FastJsonParser)
    assert type(make_parser("higress")) is JsonLineParser  # ai_log: JSON inside a string
    custom = FieldMapping({"model": ["m"], "prompt_tokens": ["p", "q"]})
    p = FastJsonParser(custom)
    for line in (b'{"m":"a","p":"1"}', b'{"m":"a","q":2}', b'{"m":"a","p":"1","q":"-"}'):
        assert outcome(p, line) == outcome(JsonLineParser(custom), line)
