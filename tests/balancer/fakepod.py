"""A pod the test controls: an aiohttp server whose /metrics page is a small vLLM page, or
never answers, or answers 500, or is garbage; whose completions succeed or answer 500; and
which counts every request it gets (so a test can prove nothing reached it)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import orjson
from aiohttp import web

from llmtraffic.contracts import vllm

METRICS_MODES = ("ok", "timeout", "500", "garbage")
ANSWER_MODES = ("ok", "500")
GARBAGE = b"\x00\xff\xfe<html>this is not a metrics page {{{\n"


def vllm_page(model: str, waiting: float = 0, kv: float = 0.1) -> bytes:
    """The three gauges the balancer reads, V1 names, one engine."""
    labels = f'{{model_name="{model}",engine="0"}}'
    return "".join(f"# TYPE {name} gauge\n{name}{labels} {value}\n" for name, value in (
        (vllm.NUM_REQUESTS_RUNNING, 0), (vllm.NUM_REQUESTS_WAITING, waiting),
        (vllm.KV_CACHE_USAGE, kv))).encode()


class FakePod:
    """`await FakePod(metrics=..., answer=...).start()`; modes can change at any time."""

    def __init__(self, model: str, metrics: str = "ok", answer: str = "ok",
                 port: int = 0) -> None:
        assert metrics in METRICS_MODES and answer in ANSWER_MODES
        self.model = model
        self.metrics = metrics
        self.answer = answer
        self.port = port
        self.hits: Counter[str] = Counter()  # path -> requests received
        self.bodies: list[bytes] = []  # request bodies of the completion endpoints
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def requests(self) -> int:
        """Requests other than scrapes."""
        return sum(n for path, n in self.hits.items() if path != "/metrics")

    async def start(self) -> FakePod:
        self._closing = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_route("*", "/{tail:.*}", self._other)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        """Stop listening and drop connections, as a pod that disappears."""
        self._closing.set()  # scrapes held open by "timeout" end now
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        self.hits["/metrics"] += 1
        if self.metrics == "timeout":
            await asyncio.wait_for(self._closing.wait(), 3600)
            return web.Response(status=503)
        if self.metrics == "500":
            return web.Response(status=500, text="internal error\n")
        if self.metrics == "garbage":
            return web.Response(body=GARBAGE, content_type="text/plain")
        return web.Response(body=vllm_page(self.model), content_type="text/plain")

    async def _other(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] += 1
        raw = await request.read()
        if request.path.endswith("/completions"):
            self.bodies.append(raw)
        if self.answer == "500":
            return web.json_response({"error": {"message": "engine died", "code": 500}},
                                     status=500)
        body = orjson.loads(raw) if raw else {}
        usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        choice = {"index": 0, "text": "ok", "finish_reason": "length", "logprobs": None}
        answer = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
                  "model": body.get("model", self.model), "choices": [choice]}
        if not body.get("stream"):
            return web.json_response({**answer, "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: " + orjson.dumps(answer) + b"\n\n")
        await resp.write(b"data: " + orjson.dumps({**answer, "choices": [], "usage": usage})
                         + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
