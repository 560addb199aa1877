"""Property-based fuzzing of the access-log parsers: any bytes and any JSON object give a
record or a ParseError with a known reason, never another exception."""

from __future__ import annotations

import orjson
from hypothesis import given, settings, strategies as st

from exporter.accesslog import ParseError, make_parser

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
