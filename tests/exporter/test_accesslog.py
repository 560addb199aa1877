"""Access-log parsing: Istio JSON with string values, ASM's LLM fields, AI-gateway names,
Envoy text formats, the mapping file, every ParseError reason, and the writer round-trip."""

from __future__ import annotations

import orjson
import pytest

from llmtraffic.exporter.accesslog import (ISTIO_TEXT_FORMAT, FieldMapping, ParseError,
    make_parser)
from llmtraffic.contracts.record import AccessLogWriter, LLMRecord, record_to_json

ISTIO_LINE = {
    "start_time": "2026-11-24T03:00:00.000Z", "method": "POST", "path": "/v1/completions",
    "protocol": "HTTP/1.1", "response_code": "200", "response_flags": "-",
    "bytes_received": "412", "bytes_sent": "1833", "duration": "7640",
    "upstream_service_time": "7639", "x_forwarded_for": None, "user_agent": "curl/8.0",
    "request_id": "r-1", "authority": "test.com", "upstream_host": "10.1.2.3:8000",
    "upstream_cluster": "outbound|8000||vllm", "downstream_remote_address": "10.0.0.1:5555",
    "route_name": "default", "request_model": "tweet-summary",
    "request_prompt_tokens": "11", "request_completion_tokens": "100"}


def test_istio_json_with_string_values_and_asm_fields():
    rec = make_parser().parse(orjson.dumps(ISTIO_LINE))
    assert rec.response_code == 200 and rec.duration_ms == 7640.0
    assert rec.bytes_received == 412 and rec.x_forwarded_for is None
    assert rec.response_flags is None  # "-" means unset
    assert (rec.model, rec.prompt_tokens, rec.completion_tokens) == ("tweet-summary", 11, 100)


def test_ai_gateway_and_apisix_names():
    p = make_parser()
    a = p.parse(orjson.dumps({"gen_ai.request.model": "m1", "gen_ai.usage.input_tokens": 5,
                              "gen_ai.usage.output_tokens": 7}))
    assert (a.model, a.prompt_tokens, a.completion_tokens) == ("m1", 5, 7)
    b = p.parse(orjson.dumps({"llm_model": "m2", "llm_prompt_tokens": 3,
                              "llm_completion_tokens": 4, "llm_time_to_first_token": 120}))
    assert (b.model, b.prompt_tokens, b.completion_tokens, b.ttft_ms) == ("m2", 3, 4, 120.0)


def test_first_candidate_key_wins():
    rec = make_parser().parse(orjson.dumps({"model": "second", "request_model": "first"}))
    assert rec.model == "first"


def test_istio_default_text_format():
    line = (b'[2026-11-24T03:00:00.000Z] "POST /v1/completions HTTP/1.1" 200 - via_upstream '
            b'- "-" 412 1833 7640 7639 "10.0.0.1" "curl/8.0 (linux)" "abc" "test.com" '
            b'"10.1.2.3:8000" outbound|8000||vllm 10.1.2.4:4444 10.1.2.5:80 10.0.0.1:5555 - '
            b'default')
    rec = make_parser("istio-text").parse(line)
    assert rec.method == "POST" and rec.path == "/v1/completions"
    assert rec.response_code == 200 and rec.duration_ms == 7640.0
    assert rec.user_agent == "curl/8.0 (linux)" and rec.upstream_host == "10.1.2.3:8000"
    assert "%DURATION%" in ISTIO_TEXT_FORMAT


def test_custom_text_format_with_filter_state_and_dynamic_metadata():
    fmt = ('envoy:%START_TIME% %RESPONSE_CODE% '
           '%FILTER_STATE(wasm.asm.llmproxy.request_model:PLAIN)% '
           '%FILTER_STATE(wasm.asm.llmproxy.request_prompt_tokens:PLAIN)% '
           '%FILTER_STATE(wasm.asm.llmproxy.request_completion_tokens:PLAIN)% '
           '%DYNAMIC_METADATA(llmtraffic:pod)%')
    rec = make_parser(fmt).parse(b"2026-11-24T03:00:00Z 200 sql-lora 20 30 vllm-1")
    assert (rec.model, rec.prompt_tokens, rec.completion_tokens, rec.pod) == (
        "sql-lora", 20, 30, "vllm-1")
    with pytest.raises(ParseError) as e:
        make_parser(fmt).parse(b"not the format")
    assert e.value.reason == "format_mismatch"


def test_mapping_file(tmp_path):
    f = tmp_path / "map.yaml"
    f.write_text("preset: istio\nfields:\n  model: [x_model]\n  prompt_tokens: x_in\n")
    rec = make_parser(mapping=FieldMapping.load(str(f))).parse(
        orjson.dumps({"x_model": "m", "x_in": "9", "request_model": "ignored"}))
    assert (rec.model, rec.prompt_tokens) == ("m", 9)
    bad = tmp_path / "bad.yaml"
    bad.write_text("fields:\n  nonsense: [a]\n")
    with pytest.raises(ValueError, match="fields.nonsense"):
        FieldMapping.load(str(bad))


@pytest.mark.parametrize("line,reason", [
    (b"", "empty"), (b"   ", "empty"),
    (b'{"request_model": "m", "request_prompt_tok', "invalid_json"),
    (b'{"request_model": "\xff\xfe"}', "not_utf8"),
    (b"[1, 2, 3]", "not_object"),
    (b'{"request_model": "m", "request_prompt_tokens": "abc"}', "wrong_type"),
    (b'{"request_model": "m", "request_prompt_tokens": -5}', "wrong_type"),
    (b'{"request_model": "m", "request_prompt_tokens": [1]}', "wrong_type"),
    (b'{"request_model": ["m"]}', "wrong_type"),
    (b'{"request_prompt_tokens": 1e30}', "wrong_type"),
    (b'{"duration": "NaN"}', "wrong_type"),
    (b'{"request_model": "' + b"x" * (1 << 20) + b'"}', "too_long"),
])
def test_parse_errors_have_reasons(line, reason):
    with pytest.raises(ParseError) as e:
        make_parser().parse(line)
    assert e.value.reason == reason
    assert e.value.reason in ParseError.REASONS


def test_unknown_format_is_a_clear_error():
    with pytest.raises(ValueError, match="istio-text"):
        make_parser("xml")


def test_writer_round_trip_and_no_credentials(tmp_path):
    rec = LLMRecord(start_time="t", method="POST", path="/v1/chat/completions",
                    response_code=200, duration_ms=12.5, model="sql-lora",
                    target_model="sql-lora-1", prompt_tokens=3, completion_tokens=4,
                    total_tokens=7, ttft_ms=1.5, stream=True, pool="p", pod="vllm-0",
                    upstream_host="10.0.0.1:8000", lb_policy="llm", pick_reason="lora",
                    criticality="Critical", request_id="r")
    path = tmp_path / "access.log"
    w = AccessLogWriter(str(path))
    w.write(rec)
    w.close()
    line = path.read_bytes()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert make_parser(mapping=FieldMapping.preset("llmtraffic")).parse(line.strip()) == rec
    assert make_parser().parse(line.strip()) == rec
    rec.user_agent = "Bearer sk-secret"  # even a misplaced secret has no key of its own
    assert b"authorization" not in record_to_json(rec).lower()
    assert b"cookie" not in record_to_json(rec).lower()
