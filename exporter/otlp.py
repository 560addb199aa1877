"""OpenTelemetry logs received over OTLP (`opentelemetry.proto.collector.logs.v1`), by gRPC
(`LogsService/Export`) and HTTP (`POST /v1/logs`, protobuf or JSON, gzip or not): what Envoy's
`envoy.access_loggers.open_telemetry` (Istio's `envoyOtelAls` provider) and the OpenTelemetry
Collector send. A log record's attributes carry the access-log fields (Istio's `logFormat.
labels`); a body that is a JSON object or a key-value list adds its fields, a text body is read
with the text --format; the resource's k8s.pod.name / k8s.namespace.name / k8s.container.name
say where it came from. Each record then takes the pipeline's path."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import orjson
from aiohttp import web
from google.protobuf.json_format import ParseDict
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as pb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as pb_grpc

from llmtraffic.exporter.accesslog import JsonLineParser, ParseError
from llmtraffic.exporter.pipeline import Origin, Pipeline

log = logging.getLogger(__name__)

MAX_HTTP_BODY = 16 << 20  # OTLP exporters batch a few MB at most
PROTOBUF = "application/x-protobuf"


def value(v: Any) -> Any:
    """An AnyValue as Python (key-value lists as dicts, arrays as lists)."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "bytes_value":
        return v.bytes_value.decode("utf-8", "replace")
    return getattr(v, kind)


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs}


def origin_of_resource(attrs: dict[str, Any]) -> Origin | None:
    pod = attrs.get("k8s.pod.name")
    ns = attrs.get("k8s.namespace.name")
    container = attrs.get("k8s.container.name")
    return Origin(pod, ns, container) if pod or ns or container else None


class Receiver:
    """Turns export requests into pipeline records; counts them under its receiver name."""

    def __init__(self, pipeline: Pipeline, received: dict[str, int]) -> None:
        self.pipeline = pipeline
        self.received = received

    def _body(self, body: Any) -> dict[str, Any]:
        if isinstance(body, dict):
            return body
        if not isinstance(body, str) or not body.strip():
            return {}
        parser = self.pipeline.parser
        line = body.encode("utf-8", "surrogatepass")
        try:
            if isinstance(parser, JsonLineParser) or body.lstrip().startswith("{"):
                obj = orjson.loads(line)
                return obj if type(obj) is dict else {}
            return parser.fields(line)
        except (orjson.JSONDecodeError, ParseError):
            return {}  # a body that is no access log: the attributes alone decide

    def export(self, request: pb.ExportLogsServiceRequest, receiver: str) -> int:
        n = 0
        for rl in request.resource_logs:
            origin = origin_of_resource(_attributes(rl.resource.attributes))
            for sl in rl.scope_logs:
                for rec in sl.log_records:
                    fields = self._body(value(rec.body))
                    fields.update(_attributes(rec.attributes))
                    self.pipeline.fields(fields, origin)
                    n += 1
        self.received[receiver] = self.received.get(receiver, 0) + n
        return n


class LogsService(pb_grpc.LogsServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    async def Export(self, request: pb.ExportLogsServiceRequest,
                     context: grpc.aio.ServicerContext) -> pb.ExportLogsServiceResponse:
        self.receiver.export(request, "otlp_grpc")
        return pb.ExportLogsServiceResponse()


def add_to_server(server: grpc.aio.Server, pipeline: Pipeline,
                  received: dict[str, int]) -> None:
    pb_grpc.add_LogsServiceServicer_to_server(LogsService(Receiver(pipeline, received)), server)


def _strip_ids(doc: Any) -> Any:
    """OTLP/JSON writes trace and span ids in hex where protobuf's JSON expects base64: they
    are not read here, so they are dropped before parsing."""
    for rl in doc.get("resourceLogs", ()) if isinstance(doc, dict) else ():
        for sl in rl.get("scopeLogs", ()):
            for rec in sl.get("logRecords", ()):
                if isinstance(rec, dict):
                    rec.pop("traceId", None)
                    rec.pop("spanId", None)
    return doc


def http_app(pipeline: Pipeline, received: dict[str, int]) -> web.Application:
    """`POST /v1/logs` (OTLP/HTTP): 200 with an ExportLogsServiceResponse in the request's
    encoding; 400 for a body that is not one, 415 for another content type."""
    receiver = Receiver(pipeline, received)

    async def logs(request: web.Request) -> web.Response:
        ctype = request.content_type
        raw = await request.read()
        req = pb.ExportLogsServiceRequest()
        try:
            if ctype == PROTOBUF:
                req.ParseFromString(raw)
            elif ctype == "application/json":
                ParseDict(_strip_ids(orjson.loads(raw)), req, ignore_unknown_fields=True)
            else:
                return web.Response(status=415, text=f"send {PROTOBUF} or application/json, "
                                    f"not {ctype}\n")
        except (DecodeError, orjson.JSONDecodeError, ValueError, TypeError, AttributeError) as e:
            return web.Response(status=400, text=f"not an OTLP ExportLogsServiceRequest: "
                                f"{str(e)[:200]}\n")
        receiver.export(req, "otlp_http")
        if ctype == PROTOBUF:
            return web.Response(body=pb.ExportLogsServiceResponse().SerializeToString(),
                                content_type=PROTOBUF)
        return web.Response(body=b"{}", content_type="application/json")

    app = web.Application(client_max_size=MAX_HTTP_BODY)
    app.router.add_post("/v1/logs", logs)
    return app
