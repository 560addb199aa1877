"""Property-based fuzzing of the access-log parsers: any bytes and any JSON object give a
record or a ParseError with a known reason, never another exception."""

from __future__ import annotations

import orjson
from hypothesis import given, settings, strategies as st

from llmtraffic.exporter.accesslog import ParseError, make_parser

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)
KEYS = st.sampled_from(["request_model", "request_prompt_tokens", "duration",
                        "response_code", "stream", "ttft_ms", "llm_model", "bytes_sent",
                        "upstream_host", "gen_ai.usage.input_tokens"])
PARSERS = [make_parser(), make_parser("istio-text"),
           make_parser("envoy:%START_TIME% %FILTER_STATE(x.request_model:PLAIN)% %DURATION%")]


def _check(line: bytes) -> None:
    for p in PARSERS:
        try:
            p.parse(line)
        except ParseError as e:
            assert e.reason in ParseError.REASONS


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes(line):
    _check(line)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS | st.text(max_size=6), JSON, max_size=8))
def test_any_json_object(obj):
    _check(orjson.dumps(obj))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text(text):
    _check(text.encode("utf-8", "surrogatepass"))


# ---- differential: the compiled per-shape builders against the generic loop --------------
from llmtraffic.exporter.accesslog import (PRESETS, FieldMapping, JsonLineParser,
    TextLineParser, _Plan)

ALL_KEYS = sorted({k for keys in PRESETS["all"].values() for k in keys})
VALUES = (st.none() | st.sampled_from(["-", "", "200", "0", "-5", " 7 ", "1_000", "1e3", "nan",
                                       "inf", "true", "False", "1", "x", "9" * 30])
          | st.booleans() | st.integers(-5, 2**54) | st.floats(allow_nan=True)
          | st.lists(st.integers(-9, 9), max_size=1) | st.text(max_size=4))
OBJECTS = st.dictionaries(st.sampled_from(ALL_KEYS) | st.text(max_size=3), VALUES, max_size=12)


def reference(line: bytes):
    """What JsonLineParser.parse returned before the builders: check, loads, the loop."""
    if len(line) > 64 * 1024:
        return ("too_long",)
    if not line.strip():
        return ("empty",)
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return ("not_utf8",)
        return ("invalid_json",)
    if not isinstance(obj, dict):
        return ("not_object",)
    try:
        return _Plan(FieldMapping.preset()).record_generic(obj)
    except ParseError as e:
        return (e.reason, str(e))


def outcome(parser, line: bytes):
    try:
        return parser.parse(line)
    except ParseError as e:
        return (e.reason, str(e)) if e.reason == "wrong_type" else (e.reason,)


LONG_LIVED = make_parser()  # its shape cache fills up and switches shapes line by line


@settings(max_examples=500, deadline=None)
@given(st.lists(OBJECTS, min_size=1, max_size=6))
def test_builders_give_what_the_generic_loop_gives(objs):
    fresh = make_parser()
    for obj in objs * 2:  # the second round hits the compiled builders
        line = orjson.dumps(obj)
        want = reference(line)
        assert outcome(fresh, line) == want
        assert outcome(LONG_LIVED, line) == want


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["{}", "[]", "  ", "", "\x0c", '{"a":1}x', "nul", '"s"']))
def test_non_objects_and_blank_lines_same_reason(text):
    line = text.encode()
    assert outcome(make_parser(), line) == reference(line)


def test_istio_shape_is_compiled_and_mixed_shapes_stay_exact():
    p = JsonLineParser()
    base = {"request_model": "m", "request_prompt_tokens": "5", "response_code": "200",
            "duration": 12, "response_flags": "-", "upstream_service_time": "11"}
    r1 = p.parse(orjson.dumps(base))
    assert (r1.model, r1.prompt_tokens, r1.response_code, r1.duration_ms,
            r1.response_flags, r1.upstream_service_time_ms) == ("m", 5, 200, 12.0, None, 11.0)
    assert list(p.plan._shapes.values())[0] is not None
    both = {**base, "model": "other"}  # two candidates for one field: the generic loop
    assert p.parse(orjson.dumps(both)).model == "m"
    assert p.plan._shapes[tuple(both)] is None
    bad = {**base, "request_prompt_tokens": "many"}
    try:
        p.parse(orjson.dumps(bad))
        raise AssertionError("no error")
    except ParseError as e:
        assert e.reason == "wrong_type" and "many" in str(e)
    text = TextLineParser("%START_TIME% %RESPONSE_CODE% %DURATION%")
    assert text.parse(b"t 200 -").duration_ms is None
    assert text.parse(b"t 201 5").response_code == 201
