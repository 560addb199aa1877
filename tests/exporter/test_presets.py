"""Other gateways' published access-log lines (stored verbatim in tests/fixtures/upstream/
gateways, provenance in SOURCES.md) through their --format preset: token sums exact; a record
that names a model but carries no token count is counted by reason and said once."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import orjson
import pytest

from llmtraffic.contracts.tokens import TokenCounters
from llmtraffic.exporter.accesslog import (JSON_FORMATS, FieldMapping, ParseError,
                                           make_parser)
from llmtraffic.exporter.collector import ExporterStats
from llmtraffic.exporter.pipeline import Pipeline

GATEWAYS = Path(__file__).resolve().parents[1] / "fixtures/upstream/gateways"


def json_blocks(markdown: Path) -> list[bytes]:
    """Each ```json block of a doc, as one compact access-log line (Envoy writes one line;
    the docs pretty-print it)."""
    blocks = re.findall(r"```json\n(.*?)\n```", markdown.read_text(), re.S)
    return [orjson.dumps(orjson.loads(b)) for b in blocks]


def line_of(path: Path) -> bytes:
    return orjson.dumps(orjson.loads(path.read_bytes()))


def run(fmt: str, lines: list[bytes]) -> tuple[TokenCounters, ExporterStats]:
    counters, stats = TokenCounters(), ExporterStats()
    Pipeline(make_parser(fmt), counters, stats).lines(lines)
    return counters, stats


@pytest.mark.parametrize("doc", ["accesslogs-b20856a.md", "accesslogs-f3336c5.md"])
@pytest.mark.parametrize("fmt", ["envoy-ai-gateway", "json"])
def test_envoy_ai_gateway_documented_lines(doc: str, fmt: str) -> None:
    """Both eras of the AI Gateway's documented format (genai_* then gen_ai.*): the LLM
    example counts 15 + 7 tokens for gpt-4o-mini; the MCP example names no model."""
    llm, mcp = json_blocks(GATEWAYS / "envoy-ai-gateway" / doc)
    rec = make_parser(fmt).parse(llm)
    assert (rec.model, rec.prompt_tokens, rec.completion_tokens, rec.total_tokens) == \
        ("gpt-4o-mini", 15, 7, 22)
    assert (rec.response_code, rec.duration_ms, rec.upstream_service_time_ms) == (200, 1526, 451)
    assert (rec.path, rec.authority, rec.request_id, rec.user_agent) == (
        "/v1/chat/completions", "api.router.tetrate.ai",
        "83b63da3-45a9-4196-98b8-1a7f697d6d8d", "curl/8.7.1")
    assert rec.target_model is None and rec.upstream_host == "34.128.142.77:443"
    counters, stats = run(fmt, [llm, mcp] * 3)
    assert counters.prompt == {("gpt-4o-mini",): 45} and counters.completion == {
        ("gpt-4o-mini",): 21}
    assert counters.requests == {("gpt-4o-mini", "200"): 3}  # the MCP call is no LLM request
    assert not stats.parse_errors and not stats.without_tokens


def test_the_preset_names_the_format_fields_of_the_stored_envoyproxy_yaml() -> None:
    """Every gen_ai.* key the AI Gateway's EnvoyProxy example writes is read by the preset."""
    text = (GATEWAYS / "envoy-ai-gateway/accesslogs-envoy-proxy-llm.yaml").read_text()
    written = set(re.findall(r"^\s+(gen_ai\.[a-z_.]+):", text, re.M))
    read = {k for keys in FieldMapping.preset("envoy-ai-gateway").keys.values() for k in keys}
    assert written - {"gen_ai.provider.name"} <= read


@pytest.mark.parametrize("sample,want", [
    ("ai_log-openai-default-039756d.json", ("qwen-turbo", 10, 69, 309.0, 1955.0)),
    ("ai_log-bailian-attributes-039756d.json", ("qwen-max", 343, 153, None, 19110.0)),
])
def test_higress_ai_log_lines(sample: str, want: tuple) -> None:
    line = line_of(GATEWAYS / "higress" / sample)
    rec = make_parser("higress").parse(line)
    assert (rec.model, rec.prompt_tokens, rec.completion_tokens, rec.ttft_ms,
            rec.duration_ms) == want
    counters, stats = run("higress", [line] * 4)
    assert counters.prompt == {(want[0],): 4 * want[1]}
    assert counters.completion == {(want[0],): 4 * want[2]}
    assert not stats.without_tokens


def test_higress_log_format_addition_beside_istio_keys() -> None:
    """The README's log_format addition puts ai_log beside Istio's keys; Istio's win for
    what both say, the ai_log fills the LLM fields; an empty ai_log ("-") is no record."""
    (addition,) = re.findall(r"'(.*)'", (GATEWAYS / "higress/log_format-ai_log-039756d.txt")
                             .read_text())
    assert orjson.loads(addition) == {"ai_log": "%FILTER_STATE(wasm.ai_log:PLAIN)%"}
    ai_log = orjson.loads(line_of(GATEWAYS / "higress/ai_log-openai-default-039756d.json"))
    line = orjson.dumps({"response_code": 200, "duration": 2000, "path": "/v1/chat/completions",
                         **ai_log})
    rec = make_parser("higress").parse(line)
    assert (rec.model, rec.prompt_tokens, rec.duration_ms, rec.path) == (
        "qwen-turbo", 10, 2000.0, "/v1/chat/completions")
    assert make_parser("higress").parse(b'{"ai_log": "-", "response_code": 200}').model is None
    with pytest.raises(ParseError) as e:
        make_parser("higress").parse(b'{"ai_log": "not json"}')
    assert e.value.reason == "wrong_type" and "ai_log" in str(e.value)


def test_higress_is_not_read_by_the_default_json_format() -> None:
    line = line_of(GATEWAYS / "higress/ai_log-openai-default-039756d.json")
    assert make_parser("json").parse(line).model is None
    assert "higress" in JSON_FORMATS and "envoy-ai-gateway" in JSON_FORMATS


def test_records_without_tokens_are_counted_by_reason_and_said_once(caplog) -> None:
    lines = [
        b'{"request_model": "m", "response_code": "200", "path": "/v1/completions"}',
        b'{"request_model": "m", "response_code": "200"}',
        b'{"request_model": "m", "request_prompt_tokens": "-", "response_code": 200}',
        b'{"request_model": "m", "request_prompt_tokens": "-", "response_code": "429"}',
        b'{"request_model": "m", "request_prompt_tokens": "3", "response_code": "200"}',
        b'{"path": "/healthz", "response_code": "200"}',  # no model: not an LLM record
    ]
    with caplog.at_level(logging.WARNING, logger="llmtraffic.exporter.pipeline"):
        counters, stats = run("json", lines)
    assert stats.without_tokens == {"not_logged": 2, "empty": 1, "error_response": 1}
    assert counters.requests == {("m", "200"): 4, ("m", "429"): 1}  # counted, never dropped
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3  # once per reason
    not_logged = next(s for s in said if "not_logged" in s)
    assert "request_prompt_tokens" in not_logged and "path" in not_logged
