"""The Envoy ext_proc endpoint picker (`llmtraffic balancer --mode extproc`): the Gateway API
Inference Extension's Endpoint Picker Protocol over `envoy.service.ext_proc.v3.
ExternalProcessor/Process`, deciding with the proxy's router and policy; gRPC health apart.

One gRPC stream is one HTTP request (deploy/envoy/envoy.yaml configures Envoy for it):

- request_headers: note :method, :path, :authority; answer CONTINUE. A request without a
  body (a GET) is sent to any ready pod of the host's pool right here.
- request_body, BUFFERED (the whole body in one message): decode and decide. A refusal is an
  `immediate_response`: its status, the OpenAI error JSON, content-type, and Retry-After on
  429. Otherwise one answer carries header `x-gateway-destination-endpoint: ip:port` (the
  pick alone: an ORIGINAL_DST cluster reads exactly one address), the rewritten body with
  its content-length when it changed (target model of a weighted split, include_usage on
  streams), clear_route_cache, and dynamic metadata
  `envoy.lb: {x-gateway-destination-endpoint: "pick,fallback1,fallback2"}` (the protocol's
  list form since v0.4, read by list-aware load balancers such as Envoy's override_host) and
  `llmtraffic: {model, target_model, pool, pod, ...}` for Envoy's access log.
  FULL_DUPLEX_STREAMED (GIE's mode) also works when Envoy announces it in
  `protocol_config` (recent Envoys do): chunks are gathered, then the header answer and
  the body are sent back once it is whole; response chunks come back as streamed_response.
  STREAMED request bodies cannot work (Envoy routes before the body is seen): refused, 500.
- response_headers: :status and content-type. When the balancer added the usage event to an
  SSE stream itself, content-length is removed since that event is cut out again.
- response_body, STREAMED: usage from the JSON body (gathered up to max_body_bytes) or from
  SSE lines, TTFT too; the usage event the client did not ask for is dropped by body
  mutation (an unfinished line is held back until its newline arrives, so events are never
  split wrongly). At end of stream the counts go to the `llmtraffic` metadata as well.
- end of the gRPC stream (however it ends): in-flight released, one LLMRecord to stats,
  token counters and the access log, as the proxy does.

Failure modes. Refusals (400/404/413/429/503) are answers, not failures: they are immediate
responses whatever Envoy's failure mode. An unexpected error inside the picker ends the gRPC
stream with INTERNAL, so Envoy applies its `failure_mode_allow`: false (FailClose) answers
the client 500 and nothing reaches a pod unpicked; true (FailOpen) lets the request through
without the header, and the example routes such requests to the pool's Service. Trouble on
the response path (a body that is not JSON, a broken stream) is logged and never alters the
response beyond dropping our own usage event. A stream Envoy closes before the response
ended (client gone, upstream reset) is logged with response_flags DC.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from typing import Any, AsyncIterator, Iterable

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from llmtraffic.balancer.core import BalancerCore
from llmtraffic.balancer.discovery import Discovery
from llmtraffic.balancer.lifecycle import RequestLifecycle
from llmtraffic.balancer.options import ExtProcOptions
from llmtraffic.balancer.bodyshape import OFF_LOOP_BYTES, refusal
from llmtraffic.balancer.router import OBJECTIVE_HEADER, ApiError, Decision, decode_body
from llmtraffic.balancer.usage import LineBuffer, SseTap, new_request_id, usage_from_json
from llmtraffic.contracts.serving import stop_event
from llmtraffic.contracts.store import MetricsStore

log = logging.getLogger(__name__)

DESTINATION = "x-gateway-destination-endpoint"  # header and envoy.lb metadata key (GIE)
SERVED = "x-gateway-destination-endpoint-served"  # envoy.lb key Envoy may send back (GIE)
LB_NAMESPACE = "envoy.lb"
LLM_NAMESPACE = "llmtraffic"
#: `llmtraffic` metadata keys (LLMRecord field names, which the exporter's mapping reads):
#: the first set on the routing answer, the second at the end of the response.
REQUEST_KEYS = ("model", "target_model", "pool", "pod", "criticality", "stream", "lb_policy",
                "pick_reason")
RESPONSE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens", "ttft_ms")
LLM_METADATA_KEYS = REQUEST_KEYS + RESPONSE_KEYS
EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
HEALTH_SERVICES = ("", EXT_PROC_SERVICE, "readiness")  # SERVING once a pod is fresh
ATTRIBUTES = "envoy.filters.http.ext_proc"  # where Envoy puts request_attributes
MAX_STREAMED_CHUNK = 62_000  # Envoy caps streamed body chunks at 64 KiB
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
Mode = processing_mode_pb2.ProcessingMode


# ---- message builders ----------------------------------------------------------------------
def header_map(msg: pb.HttpHeaders) -> dict[str, str]:
    """Headers of an ext_proc message, keys lower case (Envoy sends raw_value, or value)."""
    out: dict[str, str] = {}
    for h in msg.headers.headers:
        out.setdefault(h.key.lower(), h.raw_value.decode("utf-8", "replace") if h.raw_value
                       else h.value)
    return out


def header_mutation(set_: Iterable[tuple[str, str]] = (),
                    remove: Iterable[str] = ()) -> pb.HeaderMutation:
    return pb.HeaderMutation(
        set_headers=[base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=k, raw_value=v.encode()), append_action=OVERWRITE)
            for k, v in set_],
        remove_headers=list(remove))


def metadata(fields: dict[str, dict[str, Any]]) -> struct_pb2.Struct:
    """Dynamic metadata: namespace -> {key: value}, None values left out."""
    s = struct_pb2.Struct()
    s.update({ns: {k: v for k, v in kv.items() if v is not None} for ns, kv in fields.items()})
    return s


def immediate(e: ApiError, meta: struct_pb2.Struct | None = None) -> pb.ProcessingResponse:
    """A refusal as Envoy's local reply: status, OpenAI error JSON, content-type (+ Retry-After)."""
    details = "llmtraffic_" + ApiError.TYPES.get(e.status, "error")
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=e.status), body=e.body(), details=details,
            headers=header_mutation((k.lower(), v) for k, v in e.headers().items())),
        dynamic_metadata=meta)


def _continue(kind: str, common: pb.CommonResponse | None = None,
              meta: struct_pb2.Struct | None = None) -> pb.ProcessingResponse:
    """A CONTINUE answer to a message of `kind` (request_headers, response_body, ...)."""
    cls = pb.HeadersResponse if kind.endswith("headers") else pb.BodyResponse
    return pb.ProcessingResponse(**{kind: cls(response=common or pb.CommonResponse())},
                                 dynamic_metadata=meta)


def _attribute(req: pb.ProcessingRequest, name: str) -> str | None:
    if ATTRIBUTES not in req.attributes:
        return None
    v = req.attributes[ATTRIBUTES].fields.get(name)
    return (v.string_value or None) if v is not None else None


def _served(req: pb.ProcessingRequest) -> str | None:
    """The endpoint Envoy reports it used (GIE: envoy.lb metadata in metadata_context)."""
    ns = req.metadata_context.filter_metadata.get(LB_NAMESPACE)
    v = ns.fields.get(SERVED) if ns is not None else None
    return (v.string_value or None) if v is not None else None


# ---- one HTTP request ------------------------------------------------------------------------
class _Exchange:
    """What one gRPC stream knows about its HTTP request and response."""

    def __init__(self, core: BalancerCore) -> None:
        self.life = RequestLifecycle(core)
        self.rec = self.life.rec
        self.seen = False  # request headers arrived
        self.host: str | None = None
        self.objective: str | None = None  # the request's OBJECTIVE_HEADER
        self.headers: dict[str, str] = {}  # the request's, for LLMRoute rules
        self.chat = False
        self.duplex = False  # FULL_DUPLEX_STREAMED request body
        self.duplex_response = False  # FULL_DUPLEX_STREAMED response body
        self.body = bytearray()
        self.measured = False  # the whole body's shape was checked off the event loop
        self.decision: Decision | None = None
        self.tap: SseTap | None = None
        self.lines = LineBuffer()
        self.json: bytearray | None = None  # a JSON answer gathered for its usage
        self.rewrite = False  # SSE lines are being filtered (our usage event dropped)
        self.ended = False  # the response (or our immediate answer) is complete

    def llm_fields(self, keys: tuple[str, ...]) -> dict[str, Any]:
        return {k: getattr(self.rec, k) for k in keys}


class Picker(pb_grpc.ExternalProcessorServicer):
    """The ExternalProcessor service: one `Process` stream per HTTP request."""

    def __init__(self, core: BalancerCore, options: ExtProcOptions) -> None:
        self.core = core
        self.options = options
        self._rng = random.Random(options.seed)
        self._open: set[_Exchange] = set()  # exchanges whose gRPC stream is open

    def cut_all(self) -> None:
        """The drain deadline: every exchange still open is logged as cut (503 DT)."""
        for ex in self._open:
            if not ex.ended:
                ex.life.cut = True
        if self._open:
            log.warning("drain deadline (%g s): cutting %d request(s) still in flight",
                        self.options.drain_timeout, len(self._open))

    async def Process(self, request_iterator: AsyncIterator[pb.ProcessingRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ProcessingResponse]:
        ex = _Exchange(self.core)
        self._open.add(ex)
        try:
            async for req in request_iterator:
                try:
                    if req.WhichOneof("request") == "request_body":
                        await self._measure(ex, req.request_body)
                    answers = await self._handle(ex, req)
                except ApiError as e:
                    yield self._refuse(ex, e)
                    return
                except Exception as e:  # a bug: Envoy's failure mode decides what happens
                    log.exception("ext_proc: cannot process %s", req.WhichOneof("request"))
                    ex.rec.response_code, ex.ended = 500, True
                    await context.abort(grpc.StatusCode.INTERNAL,
                                        f"endpoint picker error: {type(e).__name__}: {e}")
                for answer in answers:
                    yield answer
        finally:
            self._open.discard(ex)
            self._finish(ex)

    async def _measure(self, ex: _Exchange, msg: pb.HttpBody) -> None:
        """A large whole body's shape, checked in a thread (ApiError when refused), so a
        hostile body does not hold up the other streams."""
        size = len(ex.body) + len(msg.body)
        if size < OFF_LOOP_BYTES or size > self.options.max_body_bytes or \
                (ex.duplex and not msg.end_of_stream):
            return
        refused = await asyncio.to_thread(refusal, bytes(ex.body) + msg.body,
                                          self.core.body_limits)
        if refused is not None:
            raise ApiError(*refused)
        ex.measured = True

    # ---- dispatch ----------------------------------------------------------------------
    async def _handle(self, ex: _Exchange, req: pb.ProcessingRequest
                      ) -> list[pb.ProcessingResponse]:
        kind = req.WhichOneof("request")
        if kind == "request_headers":
            return self._request_headers(ex, req)
        if kind == "request_body":
            return await self._request_body(ex, req.request_body)
        if kind == "response_headers":
            return self._response_headers(ex, req)
        if kind == "response_body":
            return self._response_body(ex, req.response_body)
        if kind in ("request_trailers", "response_trailers"):
            return [pb.ProcessingResponse(**{kind: pb.TrailersResponse()})]
        log.warning("ext_proc: ignoring a message with no known part (%s)", kind)
        return []

    # ---- request path ------------------------------------------------------------------
    def _request_headers(self, ex: _Exchange, req: pb.ProcessingRequest
                         ) -> list[pb.ProcessingResponse]:
        msg = req.request_headers
        h = header_map(msg)
        rec = ex.rec
        ex.seen = True
        ex.host = h.get(":authority") or h.get("host")
        ex.objective = h.get(OBJECTIVE_HEADER)
        ex.headers = h
        rec.method, rec.path, rec.authority = h.get(":method"), h.get(":path"), ex.host
        rec.user_agent, rec.x_forwarded_for = h.get("user-agent"), h.get("x-forwarded-for")
        rec.request_id = h.get("x-request-id") or new_request_id()
        rec.protocol = _attribute(req, "request.protocol")
        rec.downstream_remote_address = _attribute(req, "source.address")
        ex.chat = (rec.path or "").split("?", 1)[0].endswith("/chat/completions")
        if req.HasField("protocol_config"):
            mode = req.protocol_config.request_body_mode
            ex.duplex = mode == Mode.FULL_DUPLEX_STREAMED
            ex.duplex_response = \
                req.protocol_config.response_body_mode == Mode.FULL_DUPLEX_STREAMED
            if mode == Mode.STREAMED:
                raise ApiError(500, "the ext_proc filter sends the request body STREAMED; the "
                               "endpoint picker needs request_body_mode BUFFERED (or "
                               "FULL_DUPLEX_STREAMED): fix the Envoy configuration")
        if msg.end_of_stream:
            return self._bodyless(ex)
        if ex.duplex:
            return []  # answered once the whole body is here
        return [_continue("request_headers")]

    def _bodyless(self, ex: _Exchange) -> list[pb.ProcessingResponse]:
        """A request without a body (GET /v1/models, ...): any ready pod of the pool."""
        pool = self.core.router.pool_for(ex.host, ex.headers)
        ex.rec.pool = ex.rec.upstream_cluster = pool.name
        now = time.monotonic()
        snap = self.core.store.snapshot(now)
        breaker = self.core.breaker
        pods = [p for p in snap.in_pool(pool.name)
                if p.fresh and p.pod.ready and not breaker.blocked(p.pod.address, now)]
        if not pods:
            raise ApiError(503, f"no ready pod in pool {pool.name!r}")
        addr = self._rng.choice(pods).address
        ex.life.hold(addr, pool.name)
        meta = metadata({LB_NAMESPACE: {DESTINATION: addr},
                         LLM_NAMESPACE: ex.llm_fields(("pool", "pod", "lb_policy"))})
        common = pb.CommonResponse(header_mutation=header_mutation([(DESTINATION, addr)]),
                                   clear_route_cache=True)
        return [_continue("request_headers", common, meta)]

    async def _request_body(self, ex: _Exchange, msg: pb.HttpBody
                            ) -> list[pb.ProcessingResponse]:
        ex.body += msg.body
        if len(ex.body) > self.options.max_body_bytes:
            raise ApiError(413, f"request body is larger than {self.options.max_body_bytes} "
                           "bytes")
        if ex.duplex and not msg.end_of_stream:
            return []
        raw = bytes(ex.body)
        ex.body = bytearray()
        ex.rec.bytes_received = len(raw)
        body = decode_body(raw, self.core.body_limits, measured=ex.measured)
        d = ex.decision = await ex.life.admit(ex.host, body, ex.chat, ex.objective, ex.headers)
        ex.life.hold(d.pick.address, d.pool.name, d.pick_seconds)
        payload = d.payload() if d.body != body else None
        if payload is not None:
            ex.rec.bytes_received = len(payload)
        endpoints = [d.pick.address] + [a for a in d.pick.fallbacks if a != d.pick.address]
        meta = metadata({LB_NAMESPACE: {DESTINATION: ",".join(endpoints)},
                         LLM_NAMESPACE: ex.llm_fields(REQUEST_KEYS)})
        headers = [(DESTINATION, d.pick.address)]
        if payload is not None or ex.duplex:
            headers.append(("content-length", str(len(payload if payload is not None
                                                        else raw))))
        if not ex.duplex:
            common = pb.CommonResponse(
                header_mutation=header_mutation(headers), clear_route_cache=True,
                body_mutation=pb.BodyMutation(body=payload) if payload is not None else None)
            return [_continue("request_body", common, meta)]
        out = [_continue("request_headers", pb.CommonResponse(
            header_mutation=header_mutation(headers), clear_route_cache=True), meta)]
        return out + _streamed("request_body", payload if payload is not None else raw, True)

    def _refuse(self, ex: _Exchange, e: ApiError) -> pb.ProcessingResponse:
        ex.life.refuse(e)
        ex.ended = True
        return immediate(e, metadata({LLM_NAMESPACE: ex.llm_fields(("model", "pool",
                                                                     "lb_policy"))}))

    # ---- response path -----------------------------------------------------------------
    def _response_headers(self, ex: _Exchange, req: pb.ProcessingRequest
                          ) -> list[pb.ProcessingResponse]:
        msg = req.response_headers
        h = header_map(msg)
        rec = ex.rec
        try:
            rec.response_code = int(h.get(":status", ""))
        except ValueError:
            pass
        rec.upstream_service_time_ms = round((time.monotonic() - ex.life.t0) * 1000, 3)
        rec.bytes_sent = 0
        ex.life.move(_served(req))  # Envoy used a fallback: the in-flight slot follows
        d = ex.decision
        if rec.response_code == 404 and d is not None and d.routed:
            ex.life.strike(f"answered 404 for {d.request.target_model!r}, which the routing "
                           "sends there")
        elif rec.response_code is not None:
            ex.life.answered(rec.response_code)
        remove: list[str] = []
        if rec.response_code == 200 and d is not None:
            if d.stream and "text/event-stream" in h.get("content-type", ""):
                ex.tap = SseTap(rec, ex.life.t0, drop_usage=not d.client_wants_usage)
                ex.rewrite = ex.tap.drop_usage
                if ex.rewrite and "content-length" in h:
                    remove.append("content-length")
            else:
                ex.json = bytearray()
        if msg.end_of_stream:
            ex.ended = True
        common = pb.CommonResponse(header_mutation=header_mutation(remove=remove)) \
            if remove else None
        return [_continue("response_headers", common)]

    def _response_body(self, ex: _Exchange, msg: pb.HttpBody) -> list[pb.ProcessingResponse]:
        chunk, eos = msg.body, msg.end_of_stream
        out = chunk
        if ex.tap is not None:
            lines = ex.lines.feed(chunk) + (ex.lines.flush() if eos else [])
            if ex.rewrite:
                out = b"".join(line for line in lines if ex.tap.keep(line))
            else:
                for line in lines:
                    ex.tap.keep(line)
        elif ex.json is not None:
            if len(ex.json) + len(chunk) <= self.options.max_body_bytes:
                ex.json += chunk
            else:
                ex.json = None  # too large to be an answer worth parsing
        ex.rec.bytes_sent = (ex.rec.bytes_sent or 0) + len(out)
        meta = None
        if eos:
            meta = self._ended(ex)
        if ex.duplex_response:
            return _streamed("response_body", out, eos, meta)
        common = pb.CommonResponse(body_mutation=pb.BodyMutation(body=out)) \
            if out != chunk else None
        return [_continue("response_body", common, meta)]

    def _ended(self, ex: _Exchange) -> struct_pb2.Struct:
        ex.ended = True
        if ex.json is not None:
            usage_from_json(ex.rec, bytes(ex.json))
            ex.json = None
        if ex.tap is not None and not ex.tap.done:
            ex.rec.response_flags = "UC"
            log.warning("stream from pod %s (%s) ended before [DONE]", ex.rec.pod,
                        ex.rec.upstream_host)
        return metadata({LLM_NAMESPACE: ex.llm_fields(RESPONSE_KEYS)})

    # ---- end -----------------------------------------------------------------------------
    def _finish(self, ex: _Exchange) -> None:
        if ex.seen:  # a stream that never carried a request logs nothing
            ex.life.delivered = ex.tap is not None and ex.tap.complete
            ex.life.finish(ended=ex.ended)


def _streamed(kind: str, body: bytes, eos: bool, meta: struct_pb2.Struct | None = None
              ) -> list[pb.ProcessingResponse]:
    """FULL_DUPLEX_STREAMED: the body goes back as streamed_response chunks."""
    parts = [body[i:i + MAX_STREAMED_CHUNK]
             for i in range(0, len(body), MAX_STREAMED_CHUNK)] or [b""]
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        common = pb.CommonResponse(body_mutation=pb.BodyMutation(
            streamed_response=pb.StreamedBodyResponse(body=part, end_of_stream=eos and last)))
        out.append(_continue(kind, common, meta if last else None))
    return out


# ---- the server ------------------------------------------------------------------------------
class ExtProcServer:
    """The picker process in-process: `await s.start()`, `s.port`, `s.health_port`,
    `await s.stop()`."""

    def __init__(self, discovery: Discovery, options: ExtProcOptions,
                 store: MetricsStore | None = None) -> None:
        self.options = options
        self.core = BalancerCore(discovery, options, store)
        self.picker = Picker(self.core, options)
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._watch: asyncio.Task | None = None
        self.port = 0
        self.health_port = 0

    async def start(self) -> None:
        """Bind both ports (RuntimeError when one cannot be bound), scrape once, serve."""
        from llmtraffic.contracts.serving import parse_listen

        limit = self.options.max_body_bytes + (1 << 16)
        self._server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                                ("grpc.max_send_message_length", limit)])
        pb_grpc.add_ExternalProcessorServicer_to_server(self.picker, self._server)
        self._health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
        host, port = parse_listen(self.options.listen)
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        host, port = parse_listen(self.options.health_listen)
        self.health_port = self._health_server.add_insecure_port(f"{host}:{port}")
        await self.health.set("liveness", health_pb2.HealthCheckResponse.SERVING)
        await self._set_ready(False)
        await self._health_server.start()
        await self.core.start()
        await self._server.start()
        self._watch = asyncio.create_task(self._watch_health(), name="health")
        log.info("ext_proc picker on port %d, health on %d (policy %s)", self.port,
                 self.health_port, self.core.policy.name)

    async def _set_ready(self, ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready \
            else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in HEALTH_SERVICES:
            await self.health.set(service, status)

    async def _watch_health(self) -> None:
        """SERVING while the store has a pod with fresh metrics, NOT_SERVING otherwise."""
        ready: bool | None = None
        while True:
            now = self.core.ready_pods() > 0
            if now != ready:
                await self._set_ready(now)
                log.info("ext_proc picker %s", "ready" if now else "not ready: no fresh pod")
                ready = now
            await asyncio.sleep(self.options.scrape_interval)

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            cut = asyncio.get_running_loop().call_later(self.options.drain_timeout,
                                                        self.picker.cut_all)
            await self._server.stop(self.options.drain_timeout)
            cut.cancel()
            self._server = None
        if self._health_server is not None:
            await self._health_server.stop(0)
            self._health_server = None
        await self.core.stop()
        self.core.close()


async def serve_extproc(discovery: Discovery, options: ExtProcOptions) -> int:
    """Run the picker until SIGINT/SIGTERM (SIGHUP reopens the access log); exit status."""
    server = ExtProcServer(discovery, options)
    stop = stop_event(server.core.reopen_logs)
    try:
        await server.start()
    except (OSError, RuntimeError, ValueError) as e:
        print(f"llmtraffic balancer: cannot listen on {options.listen} / "
              f"{options.health_listen}: {e}", file=sys.stderr)
        await server.stop()
        return 2
    host = options.listen.rsplit(":", 1)[0] or "0.0.0.0"
    print(f"llmtraffic balancer: ext_proc grpc://{host}:{server.port} health port "
          f"{server.health_port} policy={server.core.policy.name} "
          f"pods={len(server.core.store.pods())}", flush=True)
    await stop.wait()
    await server.stop()
    return 0
