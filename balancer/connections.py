"""The proxy's client connections: at most `limit` open at once (the rest are closed at
accept, with a log line, so spare file descriptors remain for pods, scrapes and logs), and a
deadline for each connection's first request head (a client trickling its head bytes holds
nothing for long)."""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import Callable

log = logging.getLogger(__name__)

#: File descriptors kept apart from client connections (pods, scrapes, logs, the loop).
SPARE_FDS = 64
REFUSAL_LOG_EVERY = 10.0  # seconds between two "refused connections" log lines


def default_limit() -> int:
    """Client connections the fd limit allows: each proxied request also holds one
    upstream connection, and SPARE_FDS stay free."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(1, (soft - SPARE_FDS) // 2)


class _Refused(asyncio.Protocol):
    """A connection over the limit: closed at once, no bytes read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted, and closed when its first request
    head is late."""

    __slots__ = ("inner", "guard", "transport")

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self.inner, self.guard = inner, guard
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.guard.open += 1
        asyncio.get_running_loop().call_later(self.guard.head_timeout, self._check_head)
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.open -= 1
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def _check_head(self) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        inner = self.inner
        if getattr(inner, "_request_count", 1) == 0 and \
                getattr(inner, "_current_request", None) is None:
            self.guard.head_timeouts += 1
            peer = t.get_extra_info("peername")
            log.warning("closed a connection from %s: no whole request head within %g s "
                        "(--head-timeout)", peer[0] if peer else "?", self.guard.head_timeout)
            t.close()


class ConnectionGuard:
    """Wraps aiohttp's protocol factory: `loop.create_server(guard.factory, ...)`."""

    def __init__(self, server: Callable[[], asyncio.Protocol], limit: int,
                 head_timeout: float) -> None:
        self.server = server
        self.limit = limit
        self.head_timeout = head_timeout
        self.open = 0
        self.refused = 0  # connections closed at accept since start
        self.head_timeouts = 0  # connections closed for a late first request head
        self._unlogged = 0
        self._logged_at = -REFUSAL_LOG_EVERY

    def factory(self) -> asyncio.Protocol:
        if self.open >= self.limit:
            self._refuse()
            return _Refused()
        return _Guarded(self.server(), self)

    def _refuse(self) -> None:
        self.refused += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= REFUSAL_LOG_EVERY:
            log.error("refused %d client connection(s): %d open, the limit is %d "
                      "(--max-connections; spare file descriptors are kept for pods)",
                      self._unlogged, self.open, self.limit)
            self._unlogged, self._logged_at = 0, now
