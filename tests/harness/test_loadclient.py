"""The load client counts tokens from the stream's `usage`, as a real vLLM packs several
tokens into one SSE event under load; it asks for usage (`stream_options.include_usage`)."""

from __future__ import annotations

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from llmtraffic.harness.loadclient import replay, summarize, tpot
from llmtraffic.simulator.workloads import WorkloadRequest


SEEN = web.AppKey("seen", list)


def packing_server(tokens: int, per_event: int, usage: bool = True) -> web.Application:
    """Streams `tokens` tokens, `per_event` to an SSE event, like vLLM behind a busy API
    server; the usage chunk (choices []) ends the stream when asked for and `usage`."""
    seen: list[dict] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append(body)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for start in range(0, tokens, per_event):
            n = min(per_event, tokens - start)
            chunk = {"choices": [{"index": 0, "text": "tok " * n, "finish_reason": None}],
                     "usage": None}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        if usage and body.get("stream_options", {}).get("include_usage"):
            chunk = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": tokens,
                                              "total_tokens": tokens + 7}}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app[SEEN] = seen
    return app


def work(n: int) -> list[WorkloadRequest]:
    return [WorkloadRequest(i, 0.0, "m", "hello", 12, 12) for i in range(n)]


async def test_tokens_come_from_usage_not_from_events():
    async with TestServer(packing_server(12, per_event=3)) as server:
        outs = await replay(str(server.make_url("")), work(2))
    assert all(o.ok and o.usage for o in outs)
    assert [(o.tokens, o.events, o.prompt_tokens) for o in outs] == [(12, 4, 7)] * 2
    assert all(b["stream_options"] == {"include_usage": True} for b in server.app[SEEN])
    assert tpot(outs[0]) is not None and tpot(outs[0]) >= 0
    figures = summarize(outs, 1.0, 1.0)
    assert figures["tokens_per_event"] == 3.0
    assert figures["throughput_tok_s"] == 24.0


async def test_a_server_without_usage_is_counted_one_token_per_event():
    async with TestServer(packing_server(12, per_event=3, usage=False)) as server:
        out, = await replay(str(server.make_url("")), work(1))
    assert out.ok and not out.usage and out.tokens == out.events == 4
