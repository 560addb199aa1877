"""Connection hygiene in the proxy: a client trickling its request head, its body, or
idling on a keep-alive connection is cut off; connections over the cap are closed at accept
and logged; a slow upload is not counted as the pod's time; Content-Encoding end to end."""

from __future__ import annotations

import asyncio
import gzip
import logging

import aiohttp
import orjson
import pytest

from tests.balancer.conftest import BASE, records, wait_for
from tests.fixtures.fakepod import FakePod

pytestmark = pytest.mark.e2e

BODY = orjson.dumps({"model": "llama2", "prompt": "hi", "max_tokens": 4})
HEAD = ("POST /v1/completions HTTP/1.1\r\nHost: test.com\r\n"
        "Content-Type: application/json\r\nContent-Length: {n}\r\n\r\n")


@pytest.fixture
async def pod():
    p = await FakePod(BASE).start()
    yield p
    await p.stop()


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (hang detector: 30 s)."""
    return await asyncio.wait_for(reader.read(), 30)


async def test_a_trickled_request_head_is_cut_off(pod, make_app, caplog):
    app = await make_app([pod.address], head_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: te")
    await writer.drain()
    assert await closed_by_server(reader) == b""
    writer.close()
    assert app.guard.head_timeouts == 1 and "no whole request head" in caplog.text
    assert pod.requests == 0


async def test_a_trickled_body_gets_408_and_one_log_line(pod, make_app):
    app = await make_app([pod.address], body_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(HEAD.format(n=len(BODY)).encode() + BODY[:10])
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), 30)
    writer.close()
    assert answer.split(b"\r\n")[0].endswith(b"408 Request Timeout")
    assert b"--body-timeout" in answer
    (rec,) = records(app)
    assert rec["response_code"] == 408 and pod.requests == 0


async def test_an_idle_keep_alive_connection_is_closed(pod, make_app):
    app = await make_app([pod.address], keepalive_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(HEAD.format(n=len(BODY)).encode() + BODY)
    await writer.drain()
    rest = await closed_by_server(reader)  # the answer, then the close
    writer.close()
    assert rest.startswith(b"HTTP/1.1 200 OK") and pod.requests == 1


async def test_connections_over_the_cap_are_closed_at_accept_and_logged(pod, make_app,
                                                                         caplog):
    caplog.set_level(logging.ERROR)
    app = await make_app([pod.address], max_connections=3)
    held = [await asyncio.open_connection("127.0.0.1", app.port) for _ in range(3)]
    await wait_for(lambda: app.guard.open == 3, "3 open connections")
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    assert await closed_by_server(reader) == b""
    assert app.guard.refused == 1 and "refused 1 client connection(s): 3 open" in caplog.text
    for _, w in held:
        w.close()
    await wait_for(lambda: app.guard.open == 0, "the held connections closed")
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(HEAD.format(n=len(BODY)).encode() + BODY)
    assert (await asyncio.wait_for(reader.readline(), 30)).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_a_slow_upload_is_not_the_pods_time(pod, make_app):
    app = await make_app([pod.address])
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(HEAD.format(n=len(BODY)).encode() + BODY[:10])
    await writer.drain()
    await asyncio.sleep(1.0)  # the client takes a second over its body
    writer.write(BODY[10:])
    assert (await asyncio.wait_for(reader.readline(), 30)).startswith(b"HTTP/1.1 200")
    writer.close()
    (rec,) = records(app)
    # the pod's time starts when the body is whole and sent on: the second of upload is in
    # the request's duration only
    assert rec["upstream_service_time"] <= rec["duration"] - 900


# ---- Content-Encoding ---------------------------------------------------------------------------
async def test_pods_are_asked_for_identity_and_an_encoded_answer_is_relayed_as_such(make_app):
    pod = await FakePod(BASE, answer="gzip").start()  # encodes whatever it is asked
    try:
        app = await make_app([pod.address])
        async with aiohttp.ClientSession() as s:  # decompresses what says it is gzip
            async with s.post(f"http://127.0.0.1:{app.port}/v1/completions", data=BODY,
                              headers={"Host": "test.com"}) as r:
                assert r.status == 200 and r.headers["Content-Encoding"] == "gzip"
                answer = await r.json()
    finally:
        await pod.stop()
    assert answer["choices"][0]["text"] == "ok"
    assert pod.encodings == ["identity"]
    (rec,) = records(app)
    assert rec["response_code"] == 200 and rec["prompt_tokens"] == 3  # usage read through it


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_a_request_body_that_does_not_decode_is_a_400(encoding, pod, make_app):
    app = await make_app([pod.address])
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{app.port}/v1/completions", data=b"not " * 50,
                          headers={"Host": "test.com", "Content-Encoding": encoding}) as r:
            status, body = r.status, await r.read()
    assert status == 400, body
    assert pod.requests == 0
    if encoding == "br":  # an encoding aiohttp cannot read: its HTTP parser refuses the head
        return
    assert orjson.loads(body)["error"]["message"].startswith("request body does not decode")
    (rec,) = records(app)
    assert rec["response_code"] == 400
    async with aiohttp.ClientSession() as s:  # a good gzip body is read
        async with s.post(f"http://127.0.0.1:{app.port}/v1/completions",
                          data=gzip.compress(BODY),
                          headers={"Host": "test.com", "Content-Encoding": "gzip"}) as r:
            assert r.status == 200
