"""The OpenAI-compatible reverse proxy: route each request with `balancer.router`, relay the
answer (SSE chunk by chunk), capture usage, write one access-log line per request, and
serve /v1/models, /health, /ready and /metrics. The scrape loop fills the same store."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import zlib

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import generate_latest

from llmtraffic.balancer.bodyshape import OFF_LOOP_BYTES, SMALL_BYTES, refusal
from llmtraffic.balancer.connections import ConnectionGuard, default_limit
from llmtraffic.balancer.core import BalancerCore
from llmtraffic.balancer.discovery import Discovery
from llmtraffic.balancer.lifecycle import DRAIN_CUT, RequestLifecycle
from llmtraffic.balancer.options import ProxyOptions
from llmtraffic.balancer.router import (OBJECTIVE_HEADER, ApiError, Decision,
                                        decode_body_off_loop)
from llmtraffic.balancer.usage import SseRelay, SseTap, apply_usage, new_request_id
from llmtraffic.balancer.workers import WorkerSeat
from llmtraffic.contracts.httpclient import (RETRYABLE, BadResponse, BodyTooLarge,
                                             IdleTimeout, UpstreamError, UpstreamPool,
                                             UpstreamResponse)
from llmtraffic.contracts.record import LLMRecord
from llmtraffic.contracts.store import MetricsStore

log = logging.getLogger(__name__)

#: Upstream failures before any response byte (httpclient.RETRYABLE: no connection, or it
#: closed) send the request to a fallback pod; a connect timeout is one of them (a vanished
#: pod's IP often just drops packets). Failures while relaying an answer end it.
STREAM_FAILURES = (UpstreamError,)
CLIENT_CLOSED = 499  # nginx's code for "client closed the request"
CLIENT_LEFT = "the client left"  # a relay's outcome: nothing more to send
SECRET_HEADERS = ("authorization", "cookie", "x-api-key", "proxy-authorization")
#: Request heads kept built (pods x paths); past this many the cache starts over.
HEAD_CACHE = 4096
#: Seconds the rest of a refused upload is read and dropped, so its client can read the
#: refusal (aiohttp's default is 10); then the connection closes.
LINGER_S = 1.0


class _NoRequestBytes(logging.Filter):
    """aiohttp's HTTP parser errors quote the bytes they refused (an oversized Authorization
    or Cookie header, say): log what was wrong and from where, never those bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "refused a malformed HTTP request from %s: %s (status %s)"
            record.args = (remote, type(exc).__name__, exc.code)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


#: The logger of the proxy's HTTP server (aiohttp's own is shared with every server).
HTTP_LOG = logging.getLogger("llmtraffic.balancer.http")
HTTP_LOG.addFilter(_NoRequestBytes())


def _bearer_ok(request: web.Request, secret: str | None) -> bool:
    if secret is None:
        return True
    got = request.headers.get("Authorization", "")
    scheme, _, token = got.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                              secret.encode())


class BalancerApp:
    """The proxy process in-process: `await app.start()`, `app.port`, `await app.stop()`."""

    def __init__(self, discovery: Discovery, options: ProxyOptions,
                 store: MetricsStore | None = None, seat: WorkerSeat | None = None) -> None:
        self.options = options
        self.seat = seat  # one of several workers on the port (balancer.workers), or None
        self.discovery = discovery
        self.core = BalancerCore(discovery, options, store, shared_log=seat is not None)
        core = self.core
        self.store, self.policy, self.router = core.store, core.policy, core.router
        self.stats, self.scrape_counts, self.counters = core.stats, core.scrape_counts, \
            core.counters
        self.registry, self.access_log, self.scraper = core.registry, core.access_log, \
            core.scraper
        self._pool: UpstreamPool | None = None
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        #: requests being served (their handler task) and the streams being relayed
        self._inflight: dict[RequestLifecycle, asyncio.Task] = {}
        self._streams: dict[RequestLifecycle, UpstreamResponse] = {}
        self.guard: ConnectionGuard | None = None
        #: address -> a future set when that pod is ejected (requests waiting there leave)
        self._ejections: dict[str, asyncio.Future[None]] = {}
        #: (pod address, path) -> the start of the request head sent there
        self._heads: dict[tuple[str, str], bytes] = {}
        self.core.breaker.listeners.append(self._ejected)
        self.port = 0
        self.peers = None  # PeerMetrics: this worker's series to the others, and theirs

    # ---- lifecycle -----------------------------------------------------------------------
    def app(self) -> web.Application:
        limit = self.options.max_header_bytes
        app = web.Application(client_max_size=self.options.max_body_bytes, handler_args={
            "max_line_size": limit, "max_field_size": limit, "max_headers": 128,
            "logger": HTTP_LOG, "keepalive_timeout": self.options.keepalive_timeout,
            "lingering_time": LINGER_S})
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        from llmtraffic.contracts.serving import parse_listen

        host, port = parse_listen(self.options.listen)
        # no cookies are kept (a pod's Set-Cookie is its client's), nothing is decompressed
        self._pool = UpstreamPool(self.options.connect_timeout, self.options.idle_timeout)
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        assert self._runner.server is not None
        self.guard = ConnectionGuard(self._runner.server,
                                     self.options.max_connections or default_limit(),
                                     self.options.head_timeout)
        loop = asyncio.get_running_loop()
        if self.seat is None:
            self._listener = await loop.create_server(self.guard.factory, host, port,
                                                      reuse_address=True)
        else:
            from llmtraffic.balancer.peermetrics import PeerMetrics

            self.peers = PeerMetrics(self.seat, self.registry)
            await self.peers.start()
            self._listener = await loop.create_server(self.guard.factory,
                                                      sock=self.seat.listen_socket())
        self.port = self._listener.sockets[0].getsockname()[1]
        await self.core.start()
        log.info("balancer listening on %s:%d (policy %s)", host, self.port, self.policy.name)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()  # no new connections
            self._listener = None
            await self._drain()
        await self.core.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self.peers is not None:
            await self.peers.stop()
            self.peers = None
        self.core.close()

    async def _drain(self) -> None:
        """Requests in flight get --drain-timeout to finish; then each is cut: a stream
        ends with an error event, another request is answered 503 (logged 503 DT)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.drain_timeout
        while self._inflight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if not self._inflight:
            return
        log.warning("drain deadline (%g s): cutting %d request(s) still in flight",
                    self.options.drain_timeout, len(self._inflight))
        for life, task in list(self._inflight.items()):
            life.cut = True
            up = self._streams.get(life)
            if up is not None:
                up.close()  # its relay ends it with an error event
            else:
                task.cancel()
        end = loop.time() + 5.0
        while self._inflight and loop.time() < end:
            await asyncio.sleep(0.01)

    # ---- small endpoints -----------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        if self.seat is not None:  # which of the workers answered
            return web.json_response({"status": "ok", "worker": self.seat.index})
        return web.json_response({"status": "ok"})

    async def _ready(self, request: web.Request) -> web.Response:
        fresh = self.core.ready_pods()
        return web.json_response({"ready_pods": fresh}, status=200 if fresh else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        if not _bearer_ok(request, self.options.metrics_token):
            return _error(ApiError(401, "/metrics needs `Authorization: Bearer <token>`"))
        if self.peers is None:
            page = generate_latest(self.registry)
        else:
            from llmtraffic.balancer.peermetrics import PeerUnavailable

            try:
                page = await self.peers.exposition()
            except PeerUnavailable as e:  # a partial sum would read as a counter reset
                return _error(ApiError(503, f"/metrics: a worker did not hand over its "
                                       f"series ({e}); retry"))
        return web.Response(body=page, content_type="text/plain", charset="utf-8")

    async def _models(self, request: web.Request) -> web.Response:
        if not _bearer_ok(request, self.options.api_key):
            return _error(ApiError(401, "missing or wrong API key: send "
                                   "`Authorization: Bearer <key>`"))
        res = self.router.resources
        pool = res.pool_for_host(request.host)
        pools = [pool.name] if pool else list(res.pools)
        data = [{"id": m.model_name, "object": "model", "created": 0, "owned_by": "llmtraffic",
                 "root": m.model_name, "pool": m.pool, "criticality": m.criticality}
                for p in pools for m in res.models_in(p)]
        return web.json_response({"object": "list", "data": data})

    # ---- completions ---------------------------------------------------------------------
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        life = RequestLifecycle(
            self.core, method=request.method, path=request.path,
            protocol=f"HTTP/{request.version.major}.{request.version.minor}",
            user_agent=request.headers.get("User-Agent"),
            x_forwarded_for=request.headers.get("X-Forwarded-For"),
            request_id=request.headers.get("X-Request-Id") or new_request_id(),
            authority=request.host, downstream_remote_address=request.remote)
        rec = life.rec
        self._inflight[life] = asyncio.current_task()  # type: ignore[assignment]
        try:
            if not _bearer_ok(request, self.options.api_key):
                raise ApiError(401, "missing or wrong API key: send "
                               "`Authorization: Bearer <key>`")
            try:
                raw = self._arrived_body(request)
                if raw is None:
                    async with asyncio.timeout(self.options.body_timeout):
                        raw = await self._read_body(request)
            except TimeoutError:
                raise ApiError(408, "request body not received whole within "
                               f"{self.options.body_timeout:g} s (--body-timeout)") from None
            except RequestPayloadError as e:  # a Content-Encoding it is not in
                raise ApiError(400, "request body does not decode (Content-Encoding "
                               f"{request.headers.get('Content-Encoding')!r}): "
                               f"{_root_cause(e)}") from None
            rec.bytes_received = len(raw)
            body = await decode_body_off_loop(raw, self.core.body_limits)
            decision = await life.admit(request.host, body, chat,
                                        request.headers.get(OBJECTIVE_HEADER), request.headers)
            return await self._forward(request, decision, life)
        except ApiError as e:
            life.refuse(e)
            return _error(e)
        except asyncio.CancelledError:
            if life.cut:  # the drain deadline, not the client: say so to both
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                return _error(ApiError(DRAIN_CUT, "the balancer is shutting down: the "
                                       "request was cut at its drain deadline; retry"))
            if not life.delivered:  # the client left before it had the whole answer
                rec.response_code, rec.response_flags = CLIENT_CLOSED, "DC"
            raise
        except Exception:  # a bug: logged with its traceback, never shown to the client
            log.exception("proxy: unexpected error serving %s %s (request %s)",
                          request.method, request.path, rec.request_id)
            e = ApiError(500, "internal error in the balancer; it is logged with request id "
                         f"{rec.request_id}")
            life.refuse(e)
            return _error(e)
        finally:
            del self._inflight[life]
            life.finish()

    def _arrived_body(self, request: web.Request) -> bytes | None:
        """The whole body when it came with the request head (most do) and is small enough
        that `_read_body` would not measure it yet; None: read it with `_read_body`."""
        content = request.content
        if not content.is_eof() or content.exception() is not None or \
                content.total_bytes >= min(SMALL_BYTES, self.options.max_body_bytes):
            return None
        return content.read_nowait()

    async def _read_body(self, request: web.Request) -> bytes:
        """The request body, chunk by chunk: past --max-body-bytes it is a 413 at once, and
        what has come is measured each time it doubles (from 64 KiB, in a thread from
        1 MiB), so a body over its budget is refused after its first offending bytes, not
        once 8 MB were received and measured (the rest is dropped for LINGER_S at most)."""
        limit, limits = self.options.max_body_bytes, self.core.body_limits
        if (request.content_length or 0) > limit:
            raise _too_large(limit)
        body = bytearray()
        check_at = SMALL_BYTES
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > limit:
                raise _too_large(limit)
            if len(body) >= check_at:
                check_at = 2 * len(body)
                head = bytes(body)
                refused = refusal(head, limits) if len(head) < OFF_LOOP_BYTES else \
                    await asyncio.to_thread(refusal, head, limits)
                if refused is not None:
                    raise ApiError(*refused)
        return bytes(body)

    async def _forward(self, request: web.Request, d: Decision,
                       life: RequestLifecycle) -> web.StreamResponse:
        assert self._pool is not None, "BalancerApp.start() was not awaited"
        rec = life.rec
        payload = d.payload()
        headers = _request_headers(rec.request_id or "", len(payload))
        tried: list[str] = []
        last: Exception | None = None
        for i, addr in enumerate(d.addresses(self.options.retries)):
            life.hold(addr, d.pool.name, d.pick_seconds, attempt=i)
            tried.append(addr)
            sent_at = time.monotonic()  # upstream time and TTFT count from here
            try:
                try:
                    up = await self._send(addr, request.path, payload, headers, d.stream)
                except RETRYABLE as e:
                    last = e
                    life.failed(f"proxy: {type(e).__name__}: {e}")
                    log.warning("pod %s (%s) unreachable, trying another: %s", rec.pod, addr, e)
                    continue
                except PodFault as e:
                    last = e
                    life.failed(reason=e.reason)
                    log.warning("pod %s (%s) %s; trying another", rec.pod, addr, e.reason)
                    continue
                except IdleTimeout:
                    life.failed(reason="no response")
                    raise ApiError(504, f"pod {rec.pod} ({addr}) sent no response within "
                                   f"{self.options.idle_timeout:g} s") from None
                try:
                    rec.upstream_service_time_ms = round((time.monotonic() - sent_at) * 1000,
                                                         3)
                    if d.stream and up.status == 200:
                        life.answered(200)
                        return await self._relay_stream(request, d, up, life, sent_at)
                    try:
                        return await self._relay_body(up, d, life)
                    except PodFault as e:
                        last = e
                        life.strike(e.reason)
                        rec.response_flags = e.flag
                        log.warning("pod %s (%s) %s; trying another", rec.pod, addr, e.reason)
                        continue
                finally:
                    up.close()
            finally:
                life.release()
        if isinstance(last, PodFault):
            rec.response_flags = last.flag
            raise ApiError(502, f"no pod of pool {d.pool.name!r} answered properly (tried "
                           f"{', '.join(tried)}; last: {last.reason})")
        raise ApiError(503, f"no pod could be reached in pool {d.pool.name!r} (tried "
                       f"{', '.join(tried)}; last error: {last})")

    async def _send(self, addr: str, path: str, payload: bytes, headers: bytes,
                    stream: bool) -> UpstreamResponse:
        """POST to the pod and wait for its response head: a PodFault when its head is
        broken, when a stream's head takes over --stream-header-timeout, or when the pod
        is ejected meanwhile (the request then goes elsewhere). The post runs in this task
        (no task and no asyncio.wait per request): an ejection cancels the task while it
        waits, and the cancellation is taken back here."""
        assert self._pool is not None
        task = asyncio.current_task()
        assert task is not None
        ejected = self._ejections.get(addr)
        if ejected is None:
            ejected = self._ejections[addr] = asyncio.get_running_loop().create_future()
        waiting, cut = [True], []

        def eject(_: asyncio.Future) -> None:
            if waiting[0]:  # the head may have come first: then the request stays
                cut.append(True)
                task.cancel()

        ejected.add_done_callback(eject)
        timeout = self.options.stream_header_timeout if stream else None
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await self._pool.request(addr, self._head(addr, path) + headers,
                                                payload)
        except asyncio.CancelledError:
            if not cut or task.uncancel() > 0:  # the client left (or the drain cut it)
                raise
            raise PodFault("was ejected while the request waited for its answer: "
                           + self.core.breaker.reasons.get(addr, "outlier"), "UO") from None
        except TimeoutError:
            if not deadline.expired():
                raise
            raise PodFault(f"sent no response head within {timeout:g} s "
                           "(--stream-header-timeout)", "UT") from None
        except BadResponse as e:  # a head that is not HTTP, or over the limits
            raise PodFault(f"sent a broken HTTP response head ({e})") from None
        finally:
            waiting[0] = False
            ejected.remove_done_callback(eject)

    def _head(self, addr: str, path: str) -> bytes:
        """The request line and Host header for `path` on the pod, built once (at most
        HEAD_CACHE kept)."""
        head = self._heads.get((addr, path))
        if head is None:
            if len(self._heads) >= HEAD_CACHE:
                self._heads.clear()
            head = self._heads[addr, path] = f"POST {path} HTTP/1.1\r\nHost: {addr}\r\n" \
                .encode()
        return head

    def _ejected(self, address: str) -> None:
        """The breaker opened the circuit of `address`: requests waiting there go elsewhere."""
        fut = self._ejections.pop(address, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _relay_body(self, up: UpstreamResponse, d: Decision,
                          life: RequestLifecycle) -> web.Response:
        """A whole answer, read up to --max-response-bytes and judged before any byte goes
        to the client (PodFault: another pod may take the request)."""
        rec = life.rec
        data = await self._read_answer(up, rec.pod)
        encoding = up.headers.get("content-encoding", "identity").lower()
        if up.status == 200:
            answer = _json(self._decoded(data, encoding))
            if not (isinstance(answer, dict) and answer.get("choices")):
                raise PodFault("answered 200 without any choices")
            apply_usage(rec, answer.get("usage"))
        elif up.status == 404 and d.routed:
            raise PodFault(f"answered 404 for {d.request.target_model!r}, which the routing "
                           "sends there")
        life.answered(up.status)
        rec.response_code = up.status
        rec.bytes_sent = len(data)
        headers = {"Content-Type": up.headers.get("content-type", "application/json")}
        if encoding != "identity":  # the pod encoded it though asked not to: say so
            headers["Content-Encoding"] = encoding
        return web.Response(status=up.status, body=data, headers=headers)

    def _decoded(self, data: bytes, encoding: str) -> bytes:
        """An answer's bytes as JSON text, to judge it and read its usage (at most
        --max-response-bytes of them); PodFault when they do not decode."""
        if encoding == "identity":
            return data
        if encoding not in ("gzip", "x-gzip", "deflate"):
            raise PodFault(f"sent its answer in Content-Encoding {encoding!r}, which the "
                           "balancer asked it not to use and cannot read")
        try:
            return zlib.decompressobj(47 if encoding != "deflate" else 15).decompress(
                data, self.options.max_response_bytes)
        except zlib.error as e:
            raise PodFault(f"sent a {encoding} answer that does not decode: {e}") from None

    async def _read_answer(self, up: UpstreamResponse, pod: str | None) -> bytes:
        cap = self.options.max_response_bytes
        try:
            return await up.read_all(cap)
        except BodyTooLarge as e:
            raise PodFault(f"sent an answer larger than {cap} bytes (--max-response-bytes)"
                           if e.announced is None else f"announced an answer of "
                           f"{e.announced} bytes, more than {cap} (--max-response-bytes)"
                           ) from None
        except STREAM_FAILURES as e:
            raise PodFault(f"failed while answering: {type(e).__name__}: {e}", "UC") from None

    async def _relay_stream(self, request: web.Request, d: Decision,
                            up: UpstreamResponse, life: RequestLifecycle,
                            sent_at: float) -> web.StreamResponse:
        rec = life.rec
        resp = _EventStream(status=200, headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Request-Id": rec.request_id or ""})
        await resp.prepare(request)
        rec.response_code = 200
        tap = SseTap(rec, sent_at, drop_usage=not d.client_wants_usage)
        self._streams[life] = up
        tail = b""
        try:
            failure, sent, tail = await self._relay_lines(d, up, resp, tap, rec)
        finally:
            del self._streams[life]
            # a client leaving now lost nothing (not DC), unless a last part is still unsent
            life.delivered = tap.complete and not tail
        if failure is CLIENT_LEFT:
            return resp
        if failure is None:
            life.cut = False  # it ended well before its cut took effect
        elif life.cut:
            failure = "the balancer is shutting down: the stream was cut at its drain deadline"
            log.warning("stream from pod %s (%s) cut at the drain deadline after %d chunks",
                        rec.pod, rec.upstream_host, tap.chunks)
            err = ApiError(DRAIN_CUT, failure)
        else:
            rec.response_code, rec.response_flags = 502, "UC"
            life.strike(failure)
            log.warning("stream from pod %s (%s) broke after %d chunks: %s", rec.pod,
                        rec.upstream_host, tap.chunks, failure)
            err = ApiError(502, f"upstream pod {rec.pod} failed mid-stream: {failure}")
        if failure is not None:
            tail += b"data: " + err.body() + b"\n\n"
        rec.bytes_sent = sent
        try:
            await resp.write_eof(tail)  # the last events and the stream's end: one write
        except ConnectionResetError:
            pass
        life.delivered = tap.complete
        return resp

    async def _relay_lines(self, d: Decision, up: UpstreamResponse,
                           resp: web.StreamResponse, tap: SseTap, rec: LLMRecord
                           ) -> tuple[str | None, int, bytes]:
        """The pod's SSE lines to the client, within the stream's caps (`SseRelay`): (why
        it failed or CLIENT_LEFT or None, bytes sent or to send, the last lines still to
        send). What arrived together goes on in one write, never a write per line; what
        arrived with the end of the pod's answer is left for the caller to send with the
        end of the stream."""
        relay = SseRelay(tap, d.stream_events(self.options.max_stream_tokens),
                         self.options.max_response_bytes)
        failure: str | None = None
        ended = False
        tail = b""
        while not ended and relay.failure is None:
            try:
                data = await up.read_chunk()
            except STREAM_FAILURES as e:
                failure = f"{type(e).__name__}: {e}"
                break
            ended = not data or up.done
            chunk = relay.piece(data, ended)
            if not chunk:
                continue
            if ended and relay.failure is None:
                tail = chunk
                break
            try:
                await resp.write(chunk)
            except ConnectionResetError:
                if not tap.complete:  # after the whole answer, a hang-up is no DC
                    rec.response_code, rec.response_flags = CLIENT_CLOSED, "DC"
                rec.bytes_sent = relay.passed - len(chunk)
                return CLIENT_LEFT, rec.bytes_sent, b""
            rec.bytes_sent = relay.passed  # so far: a relay the client cancels logs it too
        failure = failure or relay.failure
        if ended and failure is None:
            if not tap.done:
                failure = "the pod closed the stream before [DONE]"
            elif not tap.choices:
                failure = "the pod's stream carried no choices"
        return failure, relay.passed, tail


class _EventStream(web.StreamResponse):
    """An SSE answer whose head goes out with its first events (one write less a stream;
    aiohttp's Response buffers its head the same way)."""

    _send_headers_immediately = False


class PodFault(Exception):
    """A pod answered wrongly or not at all, before any byte reached the client: another
    pod may take the request. `flag` is the access log's response_flags."""

    def __init__(self, reason: str, flag: str = "UPE") -> None:
        super().__init__(reason)
        self.reason = reason
        self.flag = flag


def _root_cause(e: BaseException) -> BaseException:
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return e


def _json(data: bytes) -> object:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body is larger than {limit} bytes")


def _request_headers(request_id: str, length: int) -> bytes:
    """The rest of a request head to a pod: JSON, no encoding (what the client gets, the
    balancer reads), the request id (the client's own came through the HTTP parser, so it
    holds no line break; one that does is replaced) and the length."""
    if "\r" in request_id or "\n" in request_id or "\0" in request_id:
        request_id = new_request_id()
    return (f"Content-Type: application/json\r\nAccept-Encoding: identity\r\n"
            f"X-Request-Id: {request_id}\r\nContent-Length: {length}\r\n\r\n"
            ).encode("utf-8", "surrogateescape")


def _error(e: ApiError) -> web.Response:
    return web.Response(status=e.status, body=e.body(), headers=e.headers())
