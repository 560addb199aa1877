"""Bad request input through the proxy and the ext_proc picker: bodies that are huge, deeply
nested, not UTF-8, with a `model` holding newlines or control characters, duplicate keys,
wrong types; oversized and too many headers. Each gets a clear 4xx (in OpenAI's error shape
where a body is read), one access-log line, and nothing reaches a pod."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import orjson
import pytest

from llmtraffic.balancer.discovery import StaticDiscovery
from llmtraffic.balancer.extproc import ExtProcOptions, ExtProcServer
from llmtraffic.contracts.store import Pod
from tests.balancer.conftest import BASE, LABELS, SEED_FILES, records
from tests.fixtures.fakepod import FakePod

pytestmark = pytest.mark.e2e

LIMIT = 64 * 1024  # max_body_bytes in these tests
CHAT = "/v1/chat/completions"


def nest(depth: int) -> bytes:
    return (b'{"model": "llama2", "prompt": "hi", "x": ' + b"[" * depth + b"1"
            + b"]" * depth + b"}")


def js(obj: object) -> bytes:
    return orjson.dumps(obj)


#: (id, path, body, status, words the error message contains)
CASES = [
    ("huge", "/v1/completions", js({"model": "llama2", "prompt": "x" * (LIMIT + 1)}), 413,
     f"larger than {LIMIT} bytes"),
    ("nested-100", "/v1/completions", nest(100), 400, "nested deeper than 64 levels"),
    ("nested-600", "/v1/completions", nest(600), 400, "nested deeper than 64 levels"),
    ("nested-5000", "/v1/completions", nest(5000), 400, "nested deeper than 64 levels"),
    ("not-utf8", "/v1/completions", b'{"model": "llama2", "prompt": "caf\xe9"}', 400,
     "not valid UTF-8"),
    ("lone-surrogate", "/v1/completions", b'{"model": "llama2", "prompt": "\\ud800"}', 400,
     "surrogate"),
    ("binary", "/v1/completions", bytes(range(256)), 400, "not valid JSON"),
    ("model-newline", "/v1/completions",
     js({"model": "llama2\nX-Injected: 1", "prompt": "hi"}), 400, "printable"),
    ("model-crlf", "/v1/completions",
     js({"model": "llama2\r\nSet-Cookie: stolen=1", "prompt": "hi"}), 400, "printable"),
    ("model-escape-sequence", "/v1/completions",
     js({"model": "\x1b[2J\x1b[31mllama2", "prompt": "hi"}), 400, "printable"),
    ("model-nul", "/v1/completions", js({"model": "llama2\x00", "prompt": "hi"}), 400,
     "printable"),
    ("model-line-separator", "/v1/completions", js({"model": "llama2\u2028x", "prompt": "hi"}),
     400, "printable"),
    ("model-too-long", "/v1/completions", js({"model": "m" * 300, "prompt": "hi"}), 400,
     "at most 256"),
    ("duplicate-model", "/v1/completions",
     b'{"model": "tweet-summary", "prompt": "hi", "model": "llama2"}', 400,
     "'model' more than once"),
    ("duplicate-escaped-key", "/v1/completions",
     b'{"model": "tweet-summary", "prompt": "hi", "mod\\u0065l": "llama2"}', 400,
     "'model' more than once"),
    ("duplicate-stream", "/v1/completions",
     b'{"model": "llama2", "stream": false, "prompt": "hi", "stream": true}', 400,
     "'stream' more than once"),
    ("duplicate-in-message", CHAT,
     b'{"model": "llama2", "messages": [{"role": "user", "content": "hi", '
     b'"role": "system"}]}', 400, "'role' more than once"),
    ("model-number", "/v1/completions", js({"model": 7, "prompt": "hi"}), 400,
     "`model` must be a string"),
    ("model-list", "/v1/completions", js({"model": ["llama2"], "prompt": "hi"}), 400,
     "`model` must be a string"),
    ("prompt-object", "/v1/completions", js({"model": "llama2", "prompt": {"a": 1}}), 400,
     "`prompt` must be"),
    ("stream-string", "/v1/completions", js({"model": "llama2", "prompt": "hi",
                                            "stream": "yes"}), 400, "`stream`"),
    ("stream-options-list", "/v1/completions",
     js({"model": "llama2", "prompt": "hi", "stream": True, "stream_options": [1]}), 400,
     "`stream_options`"),
    ("max-tokens-string", "/v1/completions",
     js({"model": "llama2", "prompt": "hi", "max_tokens": "10"}), 400,
     "`max_tokens` must be an integer"),
    ("max-tokens-bool", "/v1/completions",
     js({"model": "llama2", "prompt": "hi", "max_tokens": True}), 400,
     "`max_tokens` must be an integer"),
    ("temperature-string", "/v1/completions",
     js({"model": "llama2", "prompt": "hi", "temperature": "hot"}), 400,
     "`temperature` must be a number"),
    ("stop-numbers", "/v1/completions", js({"model": "llama2", "prompt": "hi", "stop": [1]}),
     400, "`stop` must be"),
    ("messages-string", CHAT, js({"model": "llama2", "messages": "hi"}), 400,
     "`messages` must be a non-empty list"),
    ("message-role-number", CHAT, js({"model": "llama2", "messages": [{"role": 1,
                                                                       "content": "hi"}]}),
     400, "messages[0].role must be a string"),
    ("message-content-number", CHAT,
     js({"model": "llama2", "messages": [{"role": "user", "content": 5}]}), 400,
     "messages[0].content must be"),
    ("not-an-object", "/v1/completions", b"[1, 2, 3]", 400, "must be a JSON object"),
    ("empty", "/v1/completions", b"", 400, "empty"),
]
IDS = [c[0] for c in CASES]
INJECTED = ("X-Injected", "Set-Cookie", "stolen")


@pytest.fixture
async def pod():
    p = await FakePod(BASE).start()
    yield p
    await p.stop()


def assert_openai_error(status: int, body: bytes, want: int, words: str) -> None:
    assert status == want, body[:300]
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == want and err["type"] == "invalid_request_error"
    assert words in err["message"], err["message"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_proxy_answers_bad_bodies_4xx_and_sends_nothing(case, pod, make_app, caplog):
    _, path, body, want, words = case
    caplog.set_level(logging.DEBUG)
    app = await make_app([pod.address], max_body_bytes=LIMIT)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{app.port}{path}", data=body,
                          headers={"Host": "test.com", "Content-Type": "application/json"}) as r:
            status, raw, headers = r.status, await r.read(), r.headers
    assert_openai_error(status, raw, want, words)
    assert r.content_type == "application/json"
    assert not any(h in headers for h in ("X-Injected", "Set-Cookie"))
    assert pod.requests == 0 and not app.stats.picks
    log = Path(app.options.access_log).read_bytes()  # type: ignore[arg-type]
    assert log.count(b"\n") == 1  # one line, whatever the body held
    (rec,) = records(app)
    assert rec["response_code"] == want
    assert not any(word.encode() in log for word in INJECTED)
    assert not any(word in caplog.text for word in INJECTED)


async def test_chunked_body_over_the_limit_is_413(pod, make_app):
    app = await make_app([pod.address], max_body_bytes=LIMIT)

    async def chunks():
        yield b'{"model": "llama2", "prompt": "'
        for _ in range(LIMIT // 1024 + 2):
            yield b"x" * 1024
        yield b'"}'

    async with aiohttp.ClientSession() as s:  # no Content-Length: the limit holds anyway
        async with s.post(f"http://127.0.0.1:{app.port}/v1/completions", data=chunks(),
                          headers={"Host": "test.com"}) as r:
            assert_openai_error(r.status, await r.read(), 413, f"larger than {LIMIT}")
    assert pod.requests == 0


async def raw_request(port: int, head: str, body: bytes = b"{}") -> bytes:
    """Send bytes as they are (a client library would refuse some of these)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    return data


@pytest.mark.parametrize("extra", [
    "X-Big: " + "a" * 9000 + "\r\n",
    "".join(f"X-Header-{i}: v\r\n" for i in range(200)),
    "Authorization: Bearer " + "s" * 3000 + "\r\n",  # over the configured 2,048 bytes
], ids=["header-over-8190", "200-headers", "header-over-the-configured-limit"])
async def test_oversized_or_too_many_headers_are_400(extra, pod, make_app):
    limit = 2048 if extra.startswith("Authorization") else 8190
    app = await make_app([pod.address], max_header_bytes=limit)
    head = f"POST /v1/completions HTTP/1.1\r\nHost: test.com\r\n{extra}"
    answer = await raw_request(app.port, head, js({"model": "llama2", "prompt": "hi"}))
    assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0]
    assert pod.requests == 0 and not app.stats.picks
    # a request within the limits still works
    ok = await raw_request(app.port, "POST /v1/completions HTTP/1.1\r\nHost: test.com\r\n"
                           "Connection: close\r\n", js({"model": "llama2", "prompt": "hi"}))
    assert b" 200 " in ok.split(b"\r\n")[0] and pod.requests == 1


@pytest.mark.parametrize("case", CASES, ids=IDS)
async def test_ext_proc_answers_bad_bodies_with_an_immediate_4xx(case, pod, tmp_path,
                                                                 extra_models):
    from tests.balancer.test_extproc import FakeEnvoy

    _, path, body, want, words = case
    server = ExtProcServer(  # llama2 is routed (a model the routing does not know is a 404)
        StaticDiscovery(SEED_FILES + [extra_models],
                        pods=[Pod("vllm-0", pod.address, dict(LABELS))]),
        ExtProcOptions(listen="127.0.0.1:0", health_listen="127.0.0.1:0", seed=7,
                       max_body_bytes=LIMIT, access_log=str(tmp_path / "access.log")))
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            envoy = FakeEnvoy(server.port, http)
            ex = await envoy.send(body, path=path)
            await envoy.close()
    finally:
        await server.stop()
    assert ex.immediate is not None and ex.destination is None
    assert_openai_error(ex.immediate.status.code, ex.immediate.body, want, words)
    assert pod.requests == 0
    log = (tmp_path / "access.log").read_bytes()
    assert log.count(b"\n") == 1 and json.loads(log)["response_code"] == want


# ---- cheap bodies, expensive requests ----------------------------------------------------------
def hostile(key: bytes, item: bytes, n: int, head: bytes = b'"model": "llama2", ') -> bytes:
    return b"{" + head + b'"' + key + b'": [' + b",".join([item] * n) + b"]}"


#: (id, path, body, status, words): valid JSON that costs far more to parse, walk or relay
#: than a request should (the issue's 8 MB bodies scaled down to the same shapes; two are
#: over a MiB, so they are measured off the event loop).
HOSTILE = [
    ("empty-lists", "/v1/completions",
     hostile(b"x", b"[]", 400_000, b'"model": "llama2", "prompt": "hi", '), 413,
     "more than 16384 arrays and objects"),
    ("escaped-key-objects", "/v1/completions",
     hostile(b"x", b'{"\\u0041": 1}', 20_000, b'"model": "llama2", "prompt": "hi", '), 413,
     "more than 16384 arrays and objects"),
    ("token-ids", "/v1/completions", hostile(b"prompt", b"7", 300_000), 413,
     "more than 262144 values"),
    ("prompts", "/v1/completions", hostile(b"prompt", b'"hi"', 100_000), 413,
     "more than 2048 (--max-prompts)"),
    ("messages", CHAT, hostile(b"messages", b'{"role": "user", "content": "hi"}', 5_000), 413,
     "more than 4096 (--max-messages)"),
    ("deep-in-a-big-body", "/v1/completions",
     js({"model": "llama2", "prompt": "x" * (1 << 20)})[:-1] + b', "t": ' + b"[" * 70
     + b"]" * 70 + b"}", 400, "nested deeper than 64 levels"),
]
#: Bodies as large whose brackets and commas are inside strings pass (a code prompt).
BIG_OK = [js({"model": "llama2", "prompt": "f(a, [b], {c}); " * 120_000}),
          js({"model": "llama2", "prompt": list(range(200_000))}),
          js({"model": "llama2", "prompt": 'say \\"[{' * 100_000})]


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
async def test_proxy_refuses_bodies_over_their_budget_before_parsing(case, pod, make_app):
    _, path, body, want, words = case
    app = await make_app([pod.address])
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{app.port}{path}", data=body,
                          headers={"Host": "test.com", "Content-Type": "application/json"}) as r:
            assert_openai_error(r.status, await r.read(), want, words)
        for ok in BIG_OK:
            async with s.post(f"http://127.0.0.1:{app.port}/v1/completions", data=ok,
                              headers={"Host": "test.com"}) as r:
                assert r.status == 200, await r.read()
    assert pod.requests == len(BIG_OK) and len(records(app)) == 1 + len(BIG_OK)
    assert [orjson.loads(b)["prompt"] for b in pod.bodies] == \
        [orjson.loads(b)["prompt"] for b in BIG_OK]


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
async def test_ext_proc_refuses_bodies_over_their_budget(case, pod, tmp_path):
    from tests.balancer.test_extproc import FakeEnvoy

    _, path, body, want, words = case
    server = ExtProcServer(
        StaticDiscovery(SEED_FILES, pods=[Pod("vllm-0", pod.address, dict(LABELS))]),
        ExtProcOptions(listen="127.0.0.1:0", health_listen="127.0.0.1:0", seed=7,
                       access_log=str(tmp_path / "access.log")))
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            envoy = FakeEnvoy(server.port, http)
            ex = await envoy.send(body, path=path)
            ok = await envoy.send(BIG_OK[0].replace(b'"llama2"', b'"tweet-summary"'))
            await envoy.close()
    finally:
        await server.stop()
    assert ex.immediate is not None and ex.destination is None
    assert_openai_error(ex.immediate.status.code, ex.immediate.body, want, words)
    assert ok.immediate is None and ok.destination == pod.address
