"""The pooled HTTP/1.1 client (the proxy's and the scraper's) against scripted pods: each
answer shape (length, chunked, close-delimited), keep-alive reuse, a body read whole within a
cap, and each failure with its error class."""

from __future__ import annotations

import asyncio
import socket
from typing import Awaitable, Callable

import pytest

from llmtraffic.contracts import httpclient
from llmtraffic.contracts.httpclient import (BadResponse, BodyTooLarge, ConnectFailed,
                                             Disconnected, IdleTimeout, UpstreamPool)

HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: pod\r\nContent-Length: 2\r\n\r\n"
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Pod:
    """A TCP server that reads each request head and answers as its script says."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                self.requests.append(head + await r.readexactly(length))
                await self.script(r, w)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()


def answer(body: bytes, extra: bytes = b"") -> Script:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + extra
                + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await w.drain()
    return script


def answer_and_close(reply: bytes) -> Script:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(reply)
        await w.drain()
        w.close()
    return script


async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await asyncio.sleep(10)


async def read_all(resp: httpclient.UpstreamResponse) -> bytes:
    out = b""
    while chunk := await resp.read_chunk():
        out += chunk
    return out


async def test_a_content_length_answer_and_its_connection_is_reused() -> None:
    pod = Pod(answer(b'{"ok":1}'))
    async with pod as addr:
        pool = UpstreamPool(1.0, 5.0)
        for _ in range(3):
            resp = await pool.request(addr, HEAD, b"{}")
            assert resp.status == 200 and resp.content_length == 8
            assert resp.headers["content-type"] == "application/json"
            assert await read_all(resp) == b'{"ok":1}'
            resp.close()
        assert pod.connections == 1 and len(pod.requests) == 3
        assert pod.requests[0].endswith(b"\r\n\r\n{}")
        assert pool.in_use == 0 and pool.idle_connections() == 1
        await pool.close()


async def test_a_chunked_stream_is_read_as_it_comes() -> None:
    go = asyncio.Event()

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await w.drain()
        await go.wait()
        w.write(b"6\r\nsecond\r\n0\r\n\r\n")

    async with Pod(script) as addr:
        pool = UpstreamPool(1.0, 5.0)
        resp = await pool.request(addr, HEAD, b"{}")
        assert await resp.read_chunk() == b"first"  # before the rest was even sent
        go.set()
        assert await read_all(resp) == b"second"
        resp.close()
        assert pool.idle_connections() == 1
        await pool.close()


async def test_a_close_delimited_answer_ends_at_the_close_and_is_not_reused() -> None:
    script = answer_and_close(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
    async with Pod(script) as addr:
        pool = UpstreamPool(1.0, 5.0)
        resp = await pool.request(addr, HEAD, b"{}")
        assert await read_all(resp) == b"all of it"
        resp.close()
        assert pool.idle_connections() == 0 and pool.in_use == 0
        await pool.close()


async def test_nothing_listening_is_a_connect_failure() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    pool = UpstreamPool(1.0, 5.0)
    with pytest.raises(ConnectFailed, match=f"127.0.0.1:{port}"):
        await pool.request(f"127.0.0.1:{port}", HEAD, b"{}")
    assert pool.in_use == 0


async def test_a_silent_pod_times_out_and_a_closing_one_disconnects() -> None:
    hangs_up = answer_and_close(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
    async with Pod(silent) as addr:
        pool = UpstreamPool(1.0, 0.2)
        with pytest.raises(IdleTimeout, match="nothing for 0.2 s"):
            await pool.request(addr, HEAD, b"{}")
        assert pool.in_use == 0
    async with Pod(hangs_up) as addr:
        pool = UpstreamPool(1.0, 5.0)
        resp = await pool.request(addr, HEAD, b"{}")
        with pytest.raises(Disconnected):
            await read_all(resp)
        resp.close()
        assert pool.in_use == 0 and pool.idle_connections() == 0


@pytest.mark.parametrize("reply", [
    b"this is not HTTP\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"x" * (httpclient.MAX_HEAD_BYTES + 1) + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * (httpclient.MAX_HEADERS + 1) + b"\r\n",
], ids=["not-http", "long-header", "many-headers"])
async def test_a_broken_or_oversized_head_is_a_bad_response(reply: bytes) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(reply)
        await w.drain()

    async with Pod(script) as addr:
        pool = UpstreamPool(1.0, 5.0)
        with pytest.raises(BadResponse):
            await pool.request(addr, HEAD, b"{}")
        assert pool.in_use == 0 and pool.idle_connections() == 0


async def test_closing_an_answer_mid_read_wakes_its_reader_and_drops_the_connection() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await w.drain()
        await asyncio.sleep(10)

    async with Pod(script) as addr:
        pool = UpstreamPool(1.0, 5.0)
        resp = await pool.request(addr, HEAD, b"{}")
        reader = asyncio.create_task(resp.read_chunk())
        await asyncio.sleep(0.05)
        resp.close()  # what the drain deadline does to a stream it cuts
        with pytest.raises(Disconnected):
            await reader
        assert pool.in_use == 0 and pool.idle_connections() == 0


async def test_a_fast_pod_is_paused_until_its_answer_is_read() -> None:
    big = b"x" * (4 * httpclient.HIGH_WATER)
    pod = Pod(answer(big))
    async with pod as addr:
        pool = UpstreamPool(1.0, 5.0)
        resp = await pool.request(addr, HEAD, b"{}")
        await asyncio.sleep(0.1)
        assert resp.paused and resp.buffered < 2 * httpclient.HIGH_WATER  # bounded
        assert await read_all(resp) == big
        resp.close()
        await pool.close()


async def test_a_cancelled_request_cuts_its_connection() -> None:
    async with Pod(silent) as addr:
        pool = UpstreamPool(1.0, 5.0)
        task = asyncio.create_task(pool.request(addr, HEAD, b"{}"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.in_use == 0 and pool.idle_connections() == 0


async def test_idle_connections_expire_those_of_pods_no_longer_sent_to_too() -> None:
    a, b = Pod(answer(b"{}")), Pod(answer(b"{}"))
    async with a as addr_a, b as addr_b:
        pool = UpstreamPool(1.0, 5.0, keepalive=0.2)
        for addr in (addr_a, addr_b):
            resp = await pool.request(addr, HEAD, b"{}")
            await read_all(resp)
            resp.close()
        assert pool.idle_connections() == 2
        await asyncio.sleep(0.3)
        resp = await pool.request(addr_a, HEAD, b"{}")  # sweeps first: b's goes too
        await read_all(resp)
        resp.close()
        assert pool.idle_connections() == 1 and a.connections == 2 and b.connections == 1
        assert len(pool._open) == 1
        await pool.close()


async def test_an_interim_head_is_skipped_and_a_second_answer_drops_the_connection() -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra")
        await w.drain()

    pod = Pod(script)
    async with pod as addr:
        pool = UpstreamPool(1.0, 5.0)
        resp = await pool.request(addr, HEAD, b"{}")
        assert resp.status == 200 and await read_all(resp) == b"ok"
        resp.close()
        assert pool.idle_connections() == 0 and pool.in_use == 0 and not pool._idle
        resp = await pool.request(addr, HEAD, b"{}")  # a new connection
        assert await read_all(resp) == b"ok"
        resp.close()
        assert pod.connections == 2
        await pool.close()


def chunked(*pieces: bytes) -> Script:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(
            b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n")
        await w.drain()
    return script


@pytest.mark.parametrize("script, body", [(answer(b"x" * 10), b"x" * 10),
                                          (chunked(b"abc", b"defg", b"hij"), b"abcdefghij")])
async def test_read_all_takes_a_body_of_the_cap_whole_and_reuses_its_connection(
        script: Script, body: bytes) -> None:
    pod = Pod(script)
    async with pod as addr:
        pool = UpstreamPool(1.0, 5.0)
        for _ in range(2):
            resp = await pool.request(addr, HEAD, b"{}")
            assert await resp.read_all(10) == body
            resp.close()
        assert pod.connections == 1
        await pool.close()


@pytest.mark.parametrize("script, announced, message", [
    (answer(b"x" * 11), 11, "it announces 11 bytes"),
    (chunked(b"abcdef", b"ghijk"), None, "more than 10 bytes came")])
async def test_read_all_stops_at_a_body_over_the_cap(
        script: Script, announced: int | None, message: str) -> None:
    pod = Pod(script)
    async with pod as addr:
        pool = UpstreamPool(1.0, 5.0)
        resp = await pool.request(addr, HEAD, b"{}")
        with pytest.raises(BodyTooLarge, match=message) as err:
            await resp.read_all(10)
        assert err.value.announced == announced
        resp.close()
        assert pool.in_use == 0
        if announced is not None:  # none of it read: the connection cannot be reused
            assert pool.idle_connections() == 0
        await pool.close()


async def test_a_reused_connection_closed_by_the_pod_says_so() -> None:
    answered = []

    async def once(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if answered:  # the second request: closed unanswered, as an idle pod does
            w.close()
            return
        answered.append(True)
        await answer(b"{}")(r, w)

    pod = Pod(once)
    async with pod as addr:
        pool = UpstreamPool(1.0, 5.0)
        resp = await pool.request(addr, HEAD, b"{}")
        await resp.read_all(10)
        resp.close()
        with pytest.raises(Disconnected) as err:
            await pool.request(addr, HEAD, b"{}")
        assert err.value.reused
        answered.clear()
        resp = await pool.request(addr, HEAD, b"{}")  # a new connection: not reused
        await resp.read_all(10)
        resp.close()
        await pool.close()
