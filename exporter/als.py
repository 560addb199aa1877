"""Envoy's gRPC access-log service (`envoy.service.accesslog.v3.AccessLogService`, what
`envoy.access_loggers.http_grpc` and Istio's `envoyHttpAls` provider stream): each
`HTTPAccessLogEntry` becomes the keys Istio's JSON access log would have written (common
properties, request, response) plus its logged headers, custom tags, filter state and dynamic
metadata (ours under `llmtraffic`, the Envoy AI Gateway's, ASM's), and goes through the same
mapping, counters and enriched log as a file's line."""

from __future__ import annotations

import logging
import re
from typing import Any, AsyncIterator

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2 as alog
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from google.protobuf import any_pb2, struct_pb2, wrappers_pb2
from google.protobuf.json_format import MessageToDict

from llmtraffic.exporter.pipeline import Origin, Pipeline

log = logging.getLogger(__name__)

#: ResponseFlags fields -> Envoy's short codes (%RESPONSE_FLAGS%), in Envoy's order.
FLAG_CODES = {
    "failed_local_healthcheck": "LH", "no_healthy_upstream": "UH",
    "upstream_request_timeout": "UT", "local_reset": "LR", "upstream_remote_reset": "UR",
    "upstream_connection_failure": "UF", "upstream_connection_termination": "UC",
    "upstream_overflow": "UO", "no_route_found": "NR", "delay_injected": "DI",
    "fault_injected": "FI", "rate_limited": "RL", "rate_limit_service_error": "RLSE",
    "downstream_connection_termination": "DC", "upstream_retry_limit_exceeded": "URX",
    "stream_idle_timeout": "SI", "invalid_envoy_request_headers": "IH",
    "downstream_protocol_error": "DPE", "upstream_max_stream_duration_reached": "UMSDR",
    "response_from_cache_filter": "RFCF", "no_filter_config_found": "NFCF",
    "duration_timeout": "DT", "upstream_protocol_error": "UPE", "no_cluster_found": "NC",
    "overload_manager": "OM", "dns_resolution_failure": "DF", "downstream_remote_reset": "DR",
}
PROTOCOLS = {alog.HTTPAccessLogEntry.HTTP10: "HTTP/1.0", alog.HTTPAccessLogEntry.HTTP11:
             "HTTP/1.1", alog.HTTPAccessLogEntry.HTTP2: "HTTP/2",
             alog.HTTPAccessLogEntry.HTTP3: "HTTP/3"}
#: Istio's node id: <type>~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local
_ISTIO_NODE = re.compile(r"^[a-z]+~[^~]*~(?P<pod>[^.~]+)\.(?P<ns>[^~]+)~")


def _address(addr: Any) -> str | None:
    sock = addr.socket_address
    if not sock.address:
        return None
    return f"{sock.address}:{sock.port_value}" if sock.port_value else sock.address


def _ms(duration: Any) -> float:
    return duration.seconds * 1000 + duration.nanos / 1e6


def flags(f: alog.ResponseFlags) -> str:
    """Envoy's %RESPONSE_FLAGS% text ("-" when none)."""
    codes = [code for name, code in FLAG_CODES.items() if getattr(f, name)]
    if f.HasField("unauthorized_details"):
        codes.insert(12, "UAEX")
    return ",".join(codes) or "-"


def _unpack(value: any_pb2.Any) -> Any:
    """A filter-state object as Envoy serialises them: string, bytes, Struct or Value."""
    for cls in (wrappers_pb2.StringValue, wrappers_pb2.BytesValue, struct_pb2.Struct,
                struct_pb2.Value):
        if value.Is(cls.DESCRIPTOR):
            msg = cls()
            value.Unpack(msg)
            if cls is wrappers_pb2.BytesValue:
                return msg.value.decode("utf-8", "replace")
            if cls is wrappers_pb2.StringValue:
                return msg.value
            return MessageToDict(msg)
    return None


def entry_fields(e: alog.HTTPAccessLogEntry) -> dict[str, Any]:
    """One entry as Istio-JSON keys; headers lower-cased; filter state by the last segment
    of its name and dynamic metadata by key (as %FILTER_STATE()% / %DYNAMIC_METADATA()%
    name them in a text format)."""
    c, req, resp = e.common_properties, e.request, e.response
    out: dict[str, Any] = {}
    if c.HasField("start_time"):
        out["start_time"] = c.start_time.ToJsonString()[:23] + "Z"
    if req.request_method:
        out["method"] = base_pb2.RequestMethod.Name(req.request_method)
    if req.original_path or req.path:
        out["path"] = req.original_path or req.path
    if e.protocol_version in PROTOCOLS:
        out["protocol"] = PROTOCOLS[e.protocol_version]
    if resp.HasField("response_code"):
        out["response_code"] = resp.response_code.value
    out["response_flags"] = flags(c.response_flags)
    out["bytes_received"] = req.request_body_bytes
    out["bytes_sent"] = resp.response_body_bytes
    if c.HasField("duration"):
        out["duration"] = _ms(c.duration)
    elif c.HasField("time_to_last_downstream_tx_byte"):
        out["duration"] = _ms(c.time_to_last_downstream_tx_byte)
    for key, value in (("x_forwarded_for", req.forwarded_for), ("user_agent", req.user_agent),
                       ("request_id", req.request_id), ("authority", req.authority),
                       ("upstream_cluster", c.upstream_cluster),
                       ("route_name", c.route_name),
                       ("upstream_host", _address(c.upstream_remote_address)),
                       ("downstream_remote_address", _address(c.downstream_remote_address))):
        if value:
            out[key] = value
    for headers in (req.request_headers, resp.response_headers):
        out.update((k.lower(), v) for k, v in headers.items())
    out.update(c.custom_tags)
    for name, value in c.filter_state_objects.items():
        out[name.rsplit(".", 1)[-1]] = _unpack(value)
    for ns in c.metadata.filter_metadata.values():
        out.update(MessageToDict(ns))
    return out


def origin_of_node(node_id: str) -> Origin | None:
    """The gateway pod an Istio proxy's node id names."""
    m = _ISTIO_NODE.match(node_id)
    return Origin(m["pod"], m["ns"]) if m else None


class AccessLogService(als_pb2_grpc.AccessLogServiceServicer):
    """Counts every HTTP entry of every stream through the pipeline."""

    def __init__(self, pipeline: Pipeline, received: dict[str, int]) -> None:
        self.pipeline = pipeline
        self.received = received

    async def StreamAccessLogs(self, request_iterator: AsyncIterator[
            als_pb2.StreamAccessLogsMessage], context: grpc.aio.ServicerContext
                               ) -> als_pb2.StreamAccessLogsResponse:
        origin: Origin | None = None
        async for msg in request_iterator:
            if msg.HasField("identifier"):  # the first message of a stream names the node
                origin = origin_of_node(msg.identifier.node.id)
            entries = msg.http_logs.log_entry
            for entry in entries:
                self.pipeline.fields(entry_fields(entry), origin)
            self.received["als"] = self.received.get("als", 0) + len(entries)
        return als_pb2.StreamAccessLogsResponse()


def add_to_server(server: grpc.aio.Server, pipeline: Pipeline,
                  received: dict[str, int]) -> None:
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(
        AccessLogService(pipeline, received), server)
