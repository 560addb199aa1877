"""The HTTP/1.1 client to the pods, used by the proxy (requests) and the scraper (pages):
one asyncio Protocol per connection (httptools parses the response: Content-Length, chunked
or close-delimited), keep-alive connections pooled per pod (bounded, idle ones closed),
connect and idle timeouts, bounded response heads, and the body read as it comes (with flow
control) or whole within a size cap."""

from __future__ import annotations

import asyncio
import collections
import time

import httptools

#: Response head limits: bytes of the status line and headers, and the number of headers.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 128
#: Body bytes buffered before the pod's socket stops being read (until the relay reads).
HIGH_WATER = 256 * 1024
#: Idle keep-alive connections kept per pod, and seconds one is kept by default: under
#: vLLM's own keep-alive (uvicorn's 5 s), so a request never crosses the pod closing its
#: connection (a pod closing one earlier is seen, and the connection dropped). Every
#: keep-alive period the expired ones of every pod are closed, those of pods no longer sent
#: to included.
MAX_IDLE_PER_POD = 256
KEEPALIVE_S = 4.0


class UpstreamError(Exception):
    """A pod could not be reached, or its answer broke off or was not HTTP."""


class ConnectFailed(UpstreamError):
    """No connection: refused, unreachable, or not made within the connect timeout."""


class Disconnected(UpstreamError):
    """The pod closed the connection (or this process cut it) before the answer ended;
    `reused`: on a keep-alive connection that had carried an answer before (a pod closing
    it as it idled: an idempotent request may be sent again on a new one)."""

    def __init__(self, message: str, reused: bool = False) -> None:
        super().__init__(message)
        self.reused = reused


class BadResponse(UpstreamError):
    """The pod's bytes are not an HTTP/1.1 response, or its head is over the limits."""


class IdleTimeout(UpstreamError):
    """The pod sent nothing for the idle timeout while an answer was awaited."""


class BodyTooLarge(UpstreamError):
    """A body over the reader's cap: `announced` is its Content-Length when that said so
    (nothing of it read), None when more than the cap came."""

    def __init__(self, message: str, announced: int | None) -> None:
        super().__init__(message)
        self.announced = announced


#: Failures before any response byte: the request may go to another pod.
RETRYABLE = (ConnectFailed, Disconnected)


class _Conn(asyncio.Protocol):
    """One keep-alive connection to a pod and the response being read on it."""

    def __init__(self, pool: UpstreamPool, address: str) -> None:
        self.pool, self.address = pool, address
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.uses = 0  # requests sent on this connection
        self.resp: UpstreamResponse | None = None

    # ---- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        resp = self.resp
        if resp is None:  # bytes nobody asked for: this connection cannot be reused
            self._drop()
            return
        resp.last_data = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            resp.fail(BadResponse("asked to upgrade the connection"))
        except httptools.HttpParserError as e:
            inner = e.__context__  # a callback's own error (a limit) comes wrapped
            resp.fail(inner if isinstance(inner, UpstreamError) else BadResponse(
                f"sent bytes that are not an HTTP/1.1 response ({e})"))

    def eof_received(self) -> bool | None:
        self._lost()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def pause_writing(self) -> None:  # a request body is one write; nothing to pause
        pass

    def resume_writing(self) -> None:
        pass

    # ---- httptools callbacks -------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        resp = self.resp
        assert resp is not None
        resp.head_bytes += len(name) + len(value) + 4
        resp.header_count += 1
        if resp.head_bytes > MAX_HEAD_BYTES or resp.header_count > MAX_HEADERS:
            raise BadResponse(f"sent a response head over {MAX_HEAD_BYTES} bytes or "
                              f"{MAX_HEADERS} headers")
        resp.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_message_begin(self) -> None:
        resp = self.resp
        assert resp is not None
        if resp.complete:  # bytes after the answer: the connection is not reused
            raise BadResponse("sent more than one response to one request")

    def on_headers_complete(self) -> None:
        resp = self.resp
        assert resp is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            resp.interim = True
            resp.headers.clear()
            resp.head_bytes = resp.header_count = 0
            return
        resp.status = status
        resp.keep_alive = self.parser.should_keep_alive()
        resp.head_done()

    def on_body(self, body: bytes) -> None:
        resp = self.resp
        assert resp is not None
        resp.feed(body)

    def on_message_complete(self) -> None:
        resp = self.resp
        if resp is not None and resp.interim:
            resp.interim = False
        elif resp is not None:
            resp.complete = True
            resp.wake()

    # ---- the pool's side -----------------------------------------------------------------
    def _lost(self, exc: Exception | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        resp = self.resp
        if resp is not None and not resp.complete:
            if resp.headed and "content-length" not in resp.headers and \
                    "chunked" not in resp.headers.get("transfer-encoding", "").lower():
                resp.complete = True  # a close-delimited body ends here
                resp.wake()
            else:
                resp.fail(Disconnected("the pod closed the connection before its answer "
                                       "ended" + (f" ({exc})" if exc else ""),
                                       reused=self.uses > 1))
        self.pool._forget(self)

    def _drop(self) -> None:
        """Close now (nothing is reused from here)."""
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self.pool._forget(self)

    def reusable(self) -> bool:
        t = self.transport
        return not self.closed and t is not None and not t.is_closing()


class UpstreamResponse:
    """A pod's answer: `status`, `headers` (lower-case names), `content_length`; the body
    by `read_chunk()` (b"" at its end) or `read_all(cap)`; `close()` once done with it (the
    connection goes back to the pool when the body was read whole)."""

    __slots__ = ("conn", "status", "headers", "head_bytes", "header_count", "keep_alive",
                 "headed", "interim", "complete", "error", "chunks", "buffered", "waiter",
                 "last_data", "paused", "released", "_timer")

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_bytes = 0
        self.header_count = 0
        self.keep_alive = False
        self.headed = False
        self.interim = False  # an interim (1xx) head was read; its empty message follows
        self.complete = False
        self.error: UpstreamError | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.waiter: asyncio.Future[None] | None = None
        self.last_data = conn.loop.time()
        self.paused = False
        self.released = False
        self._timer: asyncio.TimerHandle | None = None

    @property
    def done(self) -> bool:
        """The whole body has come and was read: the next `read_chunk()` is b""."""
        return self.complete and not self.chunks

    @property
    def content_length(self) -> int | None:
        v = self.headers.get("content-length")
        return int(v) if v is not None and v.isdigit() else None

    # ---- fed by the connection -----------------------------------------------------------
    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def fail(self, e: UpstreamError) -> None:
        if self.error is None and not self.complete:
            self.error = e
        self.conn._drop()
        self.wake()

    def head_done(self) -> None:
        self.headed = True
        self.wake()

    def feed(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.conn.transport:
            self.paused = True
            self.conn.transport.pause_reading()
        self.wake()

    # ---- read by the proxy ---------------------------------------------------------------
    async def _wait(self) -> None:
        """Until the connection has news; IdleTimeout after the pool's idle timeout of
        silence."""
        loop = self.conn.loop
        self.waiter = loop.create_future()
        idle = self.conn.pool.idle_timeout
        if self._timer is None:
            self._timer = loop.call_at(self.last_data + idle, self._idle_check)
        try:
            await self.waiter
        finally:
            self.waiter = None

    def _idle_check(self) -> None:
        self._timer = None
        if self.waiter is None or self.complete or self.error is not None:
            return
        idle = self.conn.pool.idle_timeout
        due = self.last_data + idle
        if self.conn.loop.time() >= due:
            self.fail(IdleTimeout(f"sent nothing for {idle:g} s"))
        else:
            self._timer = self.conn.loop.call_at(due, self._idle_check)

    async def head(self) -> None:
        while not self.headed:
            if self.error is not None:
                raise self.error
            await self._wait()

    async def read_all(self, cap: int) -> bytes:
        """The whole body; BodyTooLarge once it is known to be over `cap` bytes (from its
        Content-Length, before reading any of it, or as it comes)."""
        announced = self.content_length
        if (announced or 0) > cap:
            raise BodyTooLarge(f"it announces {announced} bytes", announced)
        parts, size = [], 0
        while chunk := await self.read_chunk():
            size += len(chunk)
            if size > cap:
                raise BodyTooLarge(f"more than {cap} bytes came", None)
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def read_chunk(self) -> bytes:
        """What has come of the body (all of it buffered, joined), or b"" at its end."""
        while True:
            if self.chunks:
                data = self.chunks.popleft() if len(self.chunks) == 1 else \
                    b"".join(self.chunks)
                self.chunks.clear()
                self.buffered = 0
                if self.paused and self.conn.transport is not None:
                    self.paused = False
                    self.conn.transport.resume_reading()
                return data
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            await self._wait()

    def close(self) -> None:
        """Done with this answer: a whole one's connection is reused, any other is cut
        (a relay waiting in `read_chunk` then gets Disconnected)."""
        if self.released:
            return
        self.released = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        conn = self.conn
        conn.pool.in_use -= 1
        if self.complete and self.keep_alive and self.error is None and not self.chunks:
            conn.pool._release(conn)
            return
        if self.error is None and not self.complete:
            self.error = Disconnected("this process closed the connection")
        conn._drop()
        self.wake()


class UpstreamPool:
    """Keep-alive connections per pod address: `await pool.request(...)` ->
    `UpstreamResponse` once its head has come. Idle connections are kept `keepalive`
    seconds, at most `max_idle_per_pod` per pod."""

    def __init__(self, connect_timeout: float, idle_timeout: float,
                 max_idle_per_pod: int = MAX_IDLE_PER_POD,
                 keepalive: float | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle_per_pod
        self.keepalive = KEEPALIVE_S if keepalive is None else keepalive
        self.loop = asyncio.get_running_loop()
        self._idle: dict[str, collections.deque[_Conn]] = {}
        self.in_use = 0  # connections carrying a request now (until its answer is closed)
        self._open: set[_Conn] = set()
        self._closed = False
        self._sweep_at = time.monotonic() + self.keepalive

    async def _connect(self, address: str) -> _Conn:
        host, _, port = address.rpartition(":")
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: _Conn(self, address), host.strip("[]"), int(port))
        except TimeoutError:
            raise ConnectFailed(f"cannot connect to {address} within "
                                f"{self.connect_timeout:g} s") from None
        except (OSError, ValueError) as e:
            raise ConnectFailed(f"cannot connect to {address}: {e}") from None
        self._open.add(conn)
        return conn

    def _reuse(self, address: str) -> _Conn | None:
        idle = self._idle.get(address)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recent: the least likely to have been closed
            if conn.reusable() and now - conn.idle_since < self.keepalive:
                return conn
            conn._drop()
        return None

    async def request(self, address: str, head: bytes,
                      payload: bytes = b"") -> UpstreamResponse:
        """Send `head` (request line and headers, ending in a blank line) and `payload` to
        the pod at `address`; the response once its head is read. ConnectFailed,
        Disconnected, BadResponse or IdleTimeout otherwise; a cancelled caller's
        connection is cut."""
        if self._closed:
            raise ConnectFailed("the client is closed (shutting down)")
        if time.monotonic() >= self._sweep_at:
            self.sweep()
        conn = self._reuse(address) or await self._connect(address)
        resp = conn.resp = UpstreamResponse(conn)
        conn.parser = httptools.HttpResponseParser(conn)
        conn.uses += 1
        self.in_use += 1
        assert conn.transport is not None
        try:
            conn.transport.write(head + payload if len(payload) < 16384 else head)
            if len(payload) >= 16384:
                conn.transport.write(payload)
            await resp.head()
        except BaseException:
            resp.close()
            raise
        return resp

    def _release(self, conn: _Conn) -> None:
        conn.resp = None
        idle = self._idle.get(conn.address)
        if self._closed or not conn.reusable() or (idle is not None and
                                                   len(idle) >= self.max_idle):
            conn._drop()
            return
        if idle is None:
            idle = self._idle[conn.address] = collections.deque()
        conn.idle_since = time.monotonic()
        idle.append(conn)
        _expire(idle, conn.idle_since - self.keepalive)

    def sweep(self) -> None:
        """Close every idle connection kept `keepalive` seconds or longer."""
        now = time.monotonic()
        self._sweep_at = now + self.keepalive
        for idle in list(self._idle.values()):
            _expire(idle, now - self.keepalive)

    def _forget(self, conn: _Conn) -> None:
        """`conn` is closed: out of the open set, and out of the idle ones if it was idle."""
        self._open.discard(conn)
        idle = self._idle.get(conn.address)
        if idle is not None and conn.resp is None:
            try:
                idle.remove(conn)
            except ValueError:
                pass
            if not idle:
                del self._idle[conn.address]

    @property
    def closed(self) -> bool:
        return self._closed

    def idle_connections(self) -> int:
        return sum(len(d) for d in self._idle.values())

    async def close(self) -> None:
        """Close every connection; later requests fail."""
        self._closed = True
        for conn in list(self._open):
            conn._drop()
        self._idle.clear()
        await asyncio.sleep(0)


def _expire(idle: collections.deque[_Conn], before: float) -> None:
    """Close the connections of `idle` (oldest first) idle since `before` or earlier."""
    while idle and idle[0].idle_since <= before:
        idle.popleft()._drop()
