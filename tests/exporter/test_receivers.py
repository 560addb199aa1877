"""The exporter's pushed-log receivers, each fed by a real client: Envoy's gRPC AccessLogService
and OpenTelemetry logs over gRPC and over HTTP (/v1/logs, protobuf and JSON, gzip).

No Envoy binary runs here: the messages are built from the official protos (xds-protos'
envoy.service.accesslog.v3 / envoy.data.accesslog.v3, opentelemetry-proto's
collector.logs.v1) as Envoy's http_grpc and open_telemetry access loggers fill them, and sent
with grpcio's client (and aiohttp for OTLP/HTTP). Token sums, requests and the enriched log
must come out exactly as for the same records read from a file."""

from __future__ import annotations

import gzip
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2 as alog
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from google.protobuf import any_pb2, struct_pb2, wrappers_pb2
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otlp
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as otlp_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from llmtraffic.exporter.als import entry_fields, flags
from llmtraffic.exporter.app import ExporterApp, ExporterOptions

NODE = "router~10.1.2.3~istio-ingressgateway-5c7d-xk2lq.istio-system~istio-system.svc.cluster.local"


def _struct(d: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


def _string_any(text: str) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(wrappers_pb2.StringValue(value=text))
    return a


def als_entry(i: int, style: str) -> alog.HTTPAccessLogEntry:
    """An entry as Envoy's http_grpc logger fills it; the LLM fields come from our picker's
    `llmtraffic` metadata, the Envoy AI Gateway's metadata plus its model header, or ASM's
    filter state."""
    e = alog.HTTPAccessLogEntry(protocol_version=alog.HTTPAccessLogEntry.HTTP11)
    c = e.common_properties
    c.start_time.FromJsonString("2026-12-02T05:40:00.123Z")
    c.duration.FromMilliseconds(1200 + i)
    c.upstream_cluster = "outbound|8000||vllm.llm.svc.cluster.local"
    c.route_name = "llm-route"
    c.upstream_remote_address.CopyFrom(address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address="10.8.0.7", port_value=8000)))
    c.downstream_remote_address.CopyFrom(address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address="10.9.0.1", port_value=41000)))
    e.request.request_method = base_pb2.POST
    e.request.path = "/v1/chat/completions"
    e.request.authority = "llm.example.com"
    e.request.request_id = f"req-{i}"
    e.request.request_body_bytes = 300
    e.response.response_code.value = 200 if i % 10 else 503
    e.response.response_body_bytes = 900
    if i % 10 == 0:
        c.response_flags.upstream_connection_failure = True
        return e  # a failure: no LLM fields at all
    model, p, q = f"m{i % 3}", i, 2 * i
    if style == "llmtraffic":
        c.metadata.filter_metadata["llmtraffic"].CopyFrom(_struct(
            {"model": model, "prompt_tokens": p, "completion_tokens": q, "pool": "pool-a"}))
    elif style == "ai-gateway":
        e.request.request_headers["x-ai-eg-model"] = model
        c.metadata.filter_metadata["io.envoy.ai_gateway"].CopyFrom(_struct(
            {"llm_input_token": p, "llm_output_token": q, "llm_total_token": p + q}))
    else:  # ASM's llmproxy plugin, logged with filter_state_objects_to_log
        for key, v in (("request_model", model), ("request_prompt_tokens", str(p)),
                       ("request_completion_tokens", str(q))):
            c.filter_state_objects[f"wasm.asm.llmproxy.{key}"].CopyFrom(_string_any(v))
    return e


def want(n: range) -> tuple[dict, dict, int]:
    prompt: dict[tuple[str], float] = {}
    completion: dict[tuple[str], float] = {}
    for i in n:
        if i % 10:
            prompt[(f"m{i % 3}",)] = prompt.get((f"m{i % 3}",), 0) + i
            completion[(f"m{i % 3}",)] = completion.get((f"m{i % 3}",), 0) + 2 * i
    return prompt, completion, len(n)


async def started(tmp_path, **kw) -> ExporterApp:
    app = ExporterApp(ExporterOptions(listen="127.0.0.1:0",
                                      enriched_log=str(tmp_path / "enriched.log"), **kw))
    await app.start()
    return app


def test_an_entry_reads_as_istio_json_keys() -> None:
    fields = entry_fields(als_entry(7, "llmtraffic"))
    assert {k: fields[k] for k in ("start_time", "method", "path", "protocol", "response_code",
                                   "response_flags", "duration", "upstream_host",
                                   "downstream_remote_address", "authority", "request_id",
                                   "bytes_received", "bytes_sent", "route_name", "model",
                                   "prompt_tokens", "pool")} == {
        "start_time": "2026-12-02T05:40:00.123Z", "method": "POST",
        "path": "/v1/chat/completions", "protocol": "HTTP/1.1", "response_code": 200,
        "response_flags": "-", "duration": 1207.0, "upstream_host": "10.8.0.7:8000",
        "downstream_remote_address": "10.9.0.1:41000", "authority": "llm.example.com",
        "request_id": "req-7", "bytes_received": 300, "bytes_sent": 900,
        "route_name": "llm-route", "model": "m1", "prompt_tokens": 7.0, "pool": "pool-a"}
    f = alog.ResponseFlags(upstream_connection_failure=True, upstream_retry_limit_exceeded=True)
    assert flags(f) == "UF,URX" and flags(alog.ResponseFlags()) == "-"


@pytest.mark.parametrize("style", ["llmtraffic", "ai-gateway", "asm"])
async def test_als_streams_count_exactly(tmp_path, style: str) -> None:
    app = await started(tmp_path, als_listen="127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.receivers.ports['als']}") as ch:
            stub = als_pb2_grpc.AccessLogServiceStub(ch)
            for start in (0, 60):  # two streams, as Envoy opens one per worker
                msgs = [als_pb2.StreamAccessLogsMessage(
                    identifier=als_pb2.StreamAccessLogsMessage.Identifier(
                        node=base_pb2.Node(id=NODE), log_name="llmtraffic") if j == 0 else None,
                    http_logs=als_pb2.StreamAccessLogsMessage.HTTPAccessLogEntries(
                        log_entry=[als_entry(i, style) for i in range(start + j, start + j + 6)]))
                    for j in range(0, 60, 6)]

                async def stream(msgs=msgs):
                    for m in msgs:
                        yield m
                await stub.StreamAccessLogs(stream())
    finally:
        await app.stop()
    prompt, completion, n = want(range(120))
    assert app.counters.prompt == prompt and app.counters.completion == completion
    assert sum(app.counters.requests.values()) == n - 12  # the 503s named no model
    assert app.stats.received == {"als": 120} and not app.stats.parse_errors
    lines = [orjson.loads(x) for x in (tmp_path / "enriched.log").read_bytes().splitlines()]
    assert len(lines) == 120
    assert {(x["source_pod"], x["source_namespace"]) for x in lines} == {
        ("istio-ingressgateway-5c7d-xk2lq", "istio-system")}
    failed = [x for x in lines if x["response_code"] == 503]
    assert len(failed) == 12 and {x["response_flags"] for x in failed} == {"UF"}


def otlp_request(n: range, body: str) -> otlp.ExportLogsServiceRequest:
    """Log records as Envoy's open_telemetry logger (Istio envoyOtelAls `labels`) sends them:
    the access-log fields as attributes (strings, as %COMMAND% formats them), or the whole
    line in the body."""
    recs = []
    for i in n:
        fields = {"request_model": f"m{i % 3}", "request_prompt_tokens": str(i),
                  "request_completion_tokens": str(2 * i), "response_code": "200",
                  "duration": "15"} if i % 10 else {"response_code": "503",
                                                   "request_model": "-"}
        rec = logs_pb2.LogRecord(time_unix_nano=1_764_654_000_000_000_000 + i)
        if body == "attributes":
            rec.body.string_value = "[2026-12-02T05:40:00.000Z] \"POST /v1/chat/completions\""
            rec.attributes.extend(common_pb2.KeyValue(key=k, value=common_pb2.AnyValue(
                string_value=v)) for k, v in fields.items())
        else:
            rec.body.string_value = orjson.dumps(fields).decode()
        recs.append(rec)
    resource = resource_pb2.Resource(attributes=[
        common_pb2.KeyValue(key=k, value=common_pb2.AnyValue(string_value=v))
        for k, v in (("k8s.pod.name", "gw-0"), ("k8s.namespace.name", "istio-system"),
                     ("k8s.container.name", "istio-proxy"))])
    return otlp.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(
        resource=resource, scope_logs=[logs_pb2.ScopeLogs(log_records=recs)])])


@pytest.mark.parametrize("body", ["attributes", "json-body"])
async def test_otlp_grpc_export_counts_exactly(tmp_path, body: str) -> None:
    app = await started(tmp_path, otlp_grpc_listen="127.0.0.1:0",
                        dimensions=("model", "source_pod"))
    try:
        port = app.receivers.ports["otlp_grpc"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = otlp_grpc.LogsServiceStub(ch)
            for start in range(0, 100, 25):
                await stub.Export(otlp_request(range(start, start + 25), body))
    finally:
        await app.stop()
    prompt, completion, _ = want(range(100))
    assert app.counters.prompt == {(m, "gw-0"): v for (m,), v in prompt.items()}
    assert app.counters.completion == {(m, "gw-0"): v for (m,), v in completion.items()}
    assert app.stats.received == {"otlp_grpc": 100} and not app.stats.parse_errors


async def test_otlp_http_protobuf_json_and_gzip(tmp_path) -> None:
    app = await started(tmp_path, otlp_http_listen="127.0.0.1:0")
    url = f"http://127.0.0.1:{app.receivers.ports['otlp_http']}/v1/logs"
    try:
        async with aiohttp.ClientSession() as s:
            pb = otlp_request(range(0, 40), "attributes").SerializeToString()
            async with s.post(url, data=pb,
                              headers={"Content-Type": "application/x-protobuf"}) as r:
                assert r.status == 200
                otlp.ExportLogsServiceResponse.FromString(await r.read())
            doc = MessageToDict(otlp_request(range(40, 80), "attributes"))
            for rl in doc["resourceLogs"]:  # OTLP/JSON's hex ids (protobuf JSON says base64)
                for rec in rl["scopeLogs"][0]["logRecords"]:
                    rec["traceId"], rec["spanId"] = "5b8efff798038103d269b633813fc60c", \
                        "eee19b7ec3c1b174"
            async with s.post(url, data=gzip.compress(orjson.dumps(doc)),
                              headers={"Content-Type": "application/json",
                                       "Content-Encoding": "gzip"}) as r:
                assert r.status == 200, await r.text()
            async with s.post(url, data=b"\xff\x00junk",
                              headers={"Content-Type": "application/x-protobuf"}) as r:
                assert r.status == 400
            async with s.post(url, data=b"a=1", headers={"Content-Type": "text/plain"}) as r:
                assert r.status == 415
    finally:
        await app.stop()
    prompt, completion, _ = want(range(80))
    assert app.counters.prompt == prompt and app.counters.completion == completion
    assert app.stats.received == {"otlp_http": 80}
    first = orjson.loads((tmp_path / "enriched.log").read_bytes().splitlines()[1])
    assert (first["source_pod"], first["source_container"]) == ("gw-0", "istio-proxy")


async def test_als_and_otlp_grpc_share_one_address(tmp_path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = await started(tmp_path, als_listen=f"127.0.0.1:{port}",
                        otlp_grpc_listen=f"127.0.0.1:{port}")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            await otlp_grpc.LogsServiceStub(ch).Export(otlp_request(range(1, 4), "attributes"))

            async def one():
                yield als_pb2.StreamAccessLogsMessage(
                    http_logs=als_pb2.StreamAccessLogsMessage.HTTPAccessLogEntries(
                        log_entry=[als_entry(5, "llmtraffic")]))
            await als_pb2_grpc.AccessLogServiceStub(ch).StreamAccessLogs(one())
    finally:
        await app.stop()
    assert app.stats.received == {"otlp_grpc": 3, "als": 1}
