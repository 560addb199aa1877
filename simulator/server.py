"""One simulated vLLM pod in real time on aiohttp: OpenAI-compatible completions and chat
(streaming and not), /v1/models, /health and /metrics under vLLM's own names (V1 or legacy);
plus `SimFleet` (N pods in one process) and the `llmtraffic sim` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import math
import random
from pathlib import Path
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Iterator

import orjson
from aiohttp import web

from llmtraffic.contracts.serving import stop_event
from llmtraffic.simulator import tokenizer
from llmtraffic.simulator.engine import Engine, EngineConfig, SimRequest, StepResult
from llmtraffic.simulator.metrics import PodMetricsExporter
from llmtraffic.simulator.profile import DEFAULT_PROFILE, PROFILES, get_profile
from llmtraffic.simulator.workloads import SEED_ADAPTERS

log = logging.getLogger(__name__)

WORDS = ("the model answers with short plain words so that each token is one piece of "
         "text and the stream looks like a real one to any client reading it").split()
#: Mean output length (tokens) when the client does not set ignore_eos: ShareGPT-like.
EOS_MEAN_TOKENS = 200


@dataclass
class PodOptions:
    """One pod's flags (named like vLLM's where vLLM has them)."""

    model: str | None = None  # defaults to the profile's model
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    profile: str = DEFAULT_PROFILE
    max_loras: int | None = None
    max_cpu_loras: int | None = None
    lora_modules: dict[str, str] = field(default_factory=dict)
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    num_gpu_blocks: int | None = None  # override (tests); vLLM calls it num_gpu_blocks_override
    enable_prefix_caching: bool = True
    seed: int = 0
    time_scale: float = 1.0
    metrics_version: str = "v1"
    name: str = ""

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.model or get_profile(self.profile).model


class ApiError(Exception):
    """An OpenAI-style error answer."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def response(self) -> web.Response:
        kind = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowed",
                413: "RequestTooLarge"}.get(self.status, "InternalServerError")
        body = {"error": {"message": self.message, "type": kind, "param": self.param,
                          "code": self.status}}
        return web.Response(status=self.status, body=orjson.dumps(body),
                            content_type="application/json")


@dataclass(slots=True)
class _Live:
    """A request being served: the engine's SimRequest plus its delivery queue."""

    sim: SimRequest
    queue: asyncio.Queue
    arrival_wall: float


class SimServer:
    """One simulated vLLM pod."""

    def __init__(self, options: PodOptions) -> None:
        self.options = options
        if options.time_scale <= 0:
            raise ValueError(f"--time-scale must be positive, got {options.time_scale}")
        if options.metrics_version not in ("v1", "legacy"):
            raise ValueError(f"--metrics-version must be v1 or legacy, "
                             f"got {options.metrics_version!r}")
        self.profile = get_profile(options.profile)
        self.config = EngineConfig.from_profile(
            self.profile, gpu_memory_utilization=options.gpu_memory_utilization,
            max_num_seqs=options.max_num_seqs, max_loras=options.max_loras,
            max_cpu_loras=options.max_cpu_loras,
            max_num_batched_tokens=options.max_num_batched_tokens,
            max_model_len=options.max_model_len, num_gpu_blocks=options.num_gpu_blocks,
            enable_prefix_caching=options.enable_prefix_caching)
        self.engine = Engine(self.config, self.profile, seed=options.seed)
        self.model = options.served_name
        self.metrics = PodMetricsExporter(self, legacy=options.metrics_version == "legacy")
        self._live: dict[str, _Live] = {}
        self._wake = asyncio.Event()
        self._rng = random.Random(options.seed)
        self._counter = itertools.count()
        self._task: asyncio.Task | None = None
        self._runner: web.AppRunner | None = None
        self._t0 = 0.0
        self._last_arrival = 0.0
        #: The pods sharing this one's cores (a SimFleet's): with a profile measured on a
        #: shared host (`host_contention`), each of them busy slows this one's steps.
        self.host: list[SimServer] = [self]
        self.port = options.port
        self.url = ""

    # ---- clock -------------------------------------------------------------------------
    def vnow(self) -> float:
        return (time.monotonic() - self._t0) * self.options.time_scale

    def to_wall(self, virtual_seconds: float) -> float:
        """Model time → wall seconds (what clients and metrics see)."""
        return virtual_seconds / self.options.time_scale

    # ---- lifecycle ---------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    async def start(self) -> None:
        self._t0 = time.monotonic()
        self._wake = asyncio.Event()
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.host, self.options.port,
                           reuse_address=True)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.port = sock.getsockname()[1]
        self.url = f"http://{self.options.host}:{self.port}"
        self._task = asyncio.create_task(self._loop(), name=f"engine-{self.port}")

    async def stop(self) -> None:
        """Stop serving (as a pod dying): open streams are cut."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for live in list(self._live.values()):
            live.queue.put_nowait(None)
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    @property
    def address(self) -> str:
        return f"{self.options.host}:{self.port}"

    # ---- engine loop -------------------------------------------------------------------
    async def _loop(self) -> None:
        """Steps run back to back on the engine's own clock: a step starts where the last
        one ended (or at the newest arrival, or now after idling), and its tokens are
        delivered once wall time reaches its end. So a late event loop (a busy host) delays
        delivery but does not cost the simulated GPU capacity, as it would not on a GPU."""
        t_engine = 0.0
        while True:
            if not self.engine.has_work():
                self._wake.clear()
                await self._wake.wait()
                t_engine = max(t_engine, self.vnow())
            start = max(t_engine, self._last_arrival)
            res = self.engine.step(start, self._slowdown())
            if res.duration <= 0 and not res.outputs:
                t_engine = self.vnow()
                await asyncio.sleep(0.001)
                continue
            t_engine = start + res.duration
            await asyncio.sleep(max(0.0, self.to_wall(t_engine - self.vnow())))
            self._deliver(res)

    def _slowdown(self) -> float:
        contention = self.profile.host_contention
        if not contention:
            return 1.0
        return 1.0 + contention * sum(1 for s in self.host
                                      if s is not self and s.engine.has_work())

    def _deliver(self, res: StepResult) -> None:
        self.metrics.observe_step(res)
        for out in res.outputs:
            live = self._live.get(out.request.request_id)
            if live is None:
                continue
            sim = out.request
            if sim.num_generated == 1:
                self.metrics.observe_first_token(sim)
            elif len(sim.token_times) >= 2:
                self.metrics.observe_itl(self.to_wall(sim.token_times[-1] - sim.token_times[-2]))
            if out.finished:
                self.metrics.observe_finished(sim)
            live.queue.put_nowait(out)

    # ---- requests ----------------------------------------------------------------------
    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ApiError(400, f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        return body

    def _resolve_model(self, body: dict[str, Any]) -> str | None:
        model = body.get("model")
        if model is None:
            raise ApiError(400, "`model` is required", "model")
        if not isinstance(model, str):
            raise ApiError(400, "`model` must be a string", "model")
        if model == self.model:
            return None
        if model in self.options.lora_modules:
            return model
        raise ApiError(404, f"The model `{model}` does not exist.", "model")

    def _params(self, body: dict[str, Any], prompt_tokens: int, chat: bool
                ) -> tuple[int, int | None, list[str], bool, bool]:
        max_len = self.config.max_model_len
        if prompt_tokens >= max_len:
            raise ApiError(400, f"This model's maximum context length is {max_len} tokens; "
                           f"the prompt has {prompt_tokens}. Shorten the prompt.", "prompt")
        key = "max_completion_tokens" if chat and "max_completion_tokens" in body \
            else "max_tokens"
        max_tokens = body.get(key)
        if max_tokens is None:
            max_tokens = max_len - prompt_tokens if chat else 16
        elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ApiError(400, f"`{key}` must be a positive integer", key)
        max_tokens = min(max_tokens, max_len - prompt_tokens)
        temperature = body.get("temperature", 1.0)
        if temperature is not None and (isinstance(temperature, bool) or
                                        not isinstance(temperature, (int, float))
                                        or temperature < 0):
            raise ApiError(400, "`temperature` must be a non-negative number", "temperature")
        stop = body.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise ApiError(400, "`stop` must be a string or a list of strings", "stop")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(400, "`stream` must be a boolean", "stream")
        opts = body.get("stream_options") or {}
        if not isinstance(opts, dict):
            raise ApiError(400, "`stream_options` must be an object", "stream_options")
        ignore_eos = bool(body.get("ignore_eos", False))
        output_len = None if ignore_eos else self._eos_draw()
        return max_tokens, output_len, stop, stream, bool(opts.get("include_usage"))

    def _eos_draw(self) -> int:
        sigma = 0.8
        mu = math.log(EOS_MEAN_TOKENS) - sigma * sigma / 2
        return max(1, int(self._rng.lognormvariate(mu, sigma)))

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            adapter = self._resolve_model(body)
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise ApiError(400, "`prompt` is required and must be a string", "prompt")
            ids = tokenizer.encode(prompt, self.profile.chars_per_token) or [0]
            params = self._params(body, len(ids), chat=False)
        except ApiError as e:
            return e.response()
        return await self._serve(request, body["model"], adapter, ids, params, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            adapter = self._resolve_model(body)
            prompt = chat_prompt(body.get("messages"))
            ids = tokenizer.encode(prompt, self.profile.chars_per_token)
            params = self._params(body, len(ids), chat=True)
        except ApiError as e:
            return e.response()
        return await self._serve(request, body["model"], adapter, ids, params, chat=True)

    async def _serve(self, request: web.Request, model: str, adapter: str | None,
                     ids: list[int], params: tuple, chat: bool) -> web.StreamResponse:
        max_tokens, output_len, stop, stream, include_usage = params
        front = self.profile.frontend(self.engine.has_work())
        if front > 0:  # a real API server's HTTP and tokenizer (measured)
            await asyncio.sleep(self.to_wall(front))
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        sim = SimRequest(rid, ids, max_tokens, self.vnow(), adapter=adapter,
                         output_len=output_len)
        live = _Live(sim, asyncio.Queue(), time.monotonic())
        self._live[rid] = live
        self.engine.add_request(sim, sim.arrival)
        self._last_arrival = sim.arrival  # no step may start before a request it holds
        self.metrics.observe_arrival(sim)
        self._wake.set()
        created = int(time.time())
        words = _word_stream(rid)
        try:
            if stream:
                return await self._stream(request, live, model, created, words, stop, chat,
                                          include_usage)
            text, reason = await self._collect(live, words, stop)
            usage = _usage(len(ids), sim.num_generated)
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": text},
                          "logprobs": None, "finish_reason": reason}
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
                obj = "text_completion"
            return web.Response(body=orjson.dumps({
                "id": rid, "object": obj, "created": created, "model": model,
                "choices": [choice], "usage": usage}), content_type="application/json")
        finally:
            self._live.pop(rid, None)
            if sim.finished_at is None:  # client went away, or stop string: free its KV
                self.engine.abort(rid, self.vnow())
                self._wake.set()

    async def _next_tokens(self, live: _Live) -> AsyncIterator[tuple[int, bool]]:
        while True:
            out = await live.queue.get()
            if out is None:
                raise ConnectionAbortedError("pod stopped")
            yield out.new_tokens, out.finished
            if out.finished:
                return

    async def _collect(self, live: _Live, words: Iterator[str], stop: list[str]
                       ) -> tuple[str, str]:
        text = ""
        async for n, finished in self._next_tokens(live):
            for _ in range(n):
                text += next(words)
            cut = _stop_at(text, stop)
            if cut is not None:
                return cut, "stop"
            if finished:
                return text, live.sim.finish_reason or "length"
        return text, "abort"

    async def _stream(self, request: web.Request, live: _Live, model: str, created: int,
                      words: Iterator[str], stop: list[str], chat: bool,
                      include_usage: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        rid = live.sim.request_id
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, reason: str | None, role: bool = False) -> bytes:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else \
                    ({"content": text} if text is not None else {})
                choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None,
                                          "finish_reason": reason}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None,
                          "finish_reason": reason}
            return b"data: " + orjson.dumps({"id": rid, "object": obj, "created": created,
                                             "model": model, "choices": [choice]}) + b"\n\n"

        text = ""
        reason = None
        try:
            await resp.prepare(request)
            if chat:
                await resp.write(chunk(None, None, role=True))
            async for n, finished in self._next_tokens(live):
                piece = "".join(next(words) for _ in range(n))
                text += piece
                if _stop_at(text, stop) is not None:
                    reason = "stop"
                    await resp.write(chunk("", reason))
                    break
                if finished:
                    reason = live.sim.finish_reason or "length"
                await resp.write(chunk(piece, reason))
                if finished:
                    break
            if include_usage:
                usage = _usage(live.sim.num_prompt, live.sim.num_generated)
                await resp.write(b"data: " + orjson.dumps({
                    "id": rid, "object": obj, "created": created, "model": model,
                    "choices": [], "usage": usage}) + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionAbortedError:
            pass  # pod stopped: the stream is cut as a dying pod would
        except ConnectionResetError as e:  # aiohttp's ClientConnectionResetError is one
            # the client went away under a write before aiohttp cancelled this handler;
            # _serve's cleanup aborts the request in the engine, so its KV blocks come back
            log.debug("%s: client went away mid-stream (%s)", rid, e)
        return resp

    async def _models(self, request: web.Request) -> web.Response:
        created = int(time.time())
        data = [{"id": self.model, "object": "model", "created": created, "owned_by": "vllm",
                 "root": self.options.model or self.model, "parent": None,
                 "max_model_len": self.config.max_model_len}]
        data += [{"id": name, "object": "model", "created": created, "owned_by": "vllm",
                  "root": path, "parent": self.model}
                 for name, path in self.options.lora_modules.items()]
        return web.Response(body=orjson.dumps({"object": "list", "data": data}),
                            content_type="application/json")

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(),
                            content_type="text/plain", charset="utf-8")

    async def _not_found(self, request: web.Request) -> web.Response:
        return ApiError(404, f"no route {request.method} {request.path}; this server "
                        "serves /v1/completions, /v1/chat/completions, /v1/models, /health, "
                        "/metrics").response()


def chat_prompt(messages: Any) -> str:
    """Flatten chat messages with a fixed template: "<role>: <content>\\n" per message,
    then "assistant: " (content parts of type text are joined)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "`messages` is required and must be a non-empty list", "messages")
    parts = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a string `role`",
                           "messages")
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content
                              if isinstance(p, dict) and isinstance(p.get("text"), str))
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of text "
                           "parts", "messages")
        parts.append(f"{m['role']}: {content}\n")
    return "".join(parts) + "assistant: "


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _word_stream(rid: str) -> Iterator[str]:
    start = sum(rid.encode()) % len(WORDS)
    return (WORDS[(start + i) % len(WORDS)] + " " for i in itertools.count())


def _stop_at(text: str, stop: list[str]) -> str | None:
    for s in stop:
        if s:
            k = text.find(s)
            if k >= 0:
                return text[:k]
    return None


# ---- a fleet of pods in one process ------------------------------------------------------
class SimFleet:
    """N pods in one event loop on consecutive (or free) ports; pod i seeds with seed + i."""

    def __init__(self, pods: int, base_port: int = 0, host: str = "127.0.0.1",
                 **pod_options: Any) -> None:
        if pods < 1:
            raise ValueError("a fleet needs at least one pod")
        if base_port and not 1 <= base_port <= 65536 - pods:
            raise ValueError(f"--base-port {base_port}: pod i listens on base+i, so give a "
                             f"port from 1 to {65536 - pods} for {pods} pods")
        base = PodOptions(host=host, **pod_options)
        self.servers = [
            SimServer(replace(base, port=(base_port + i) if base_port else 0,
                              seed=base.seed + i, name=f"sim-{i}"))
            for i in range(pods)]
        for s in self.servers:
            s.host = self.servers  # one process: the pods share its host

    async def start(self) -> "SimFleet":
        for s in self.servers:
            await s.start()
        return self

    async def stop(self) -> None:
        for s in self.servers:
            await s.stop()

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def addresses(self) -> list[str]:
        return [s.address for s in self.servers]


@contextlib.contextmanager
def run_fleet_in_thread(pods: int, **options: Any) -> Iterator[SimFleet]:
    """A started fleet served from a background thread's event loop (for sync tests)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    thread = threading.Thread(target=lambda: (asyncio.set_event_loop(loop),
                                              loop.run_forever()), daemon=True)
    thread.start()
    fleet = SimFleet(pods, **options)

    async def _start() -> None:
        await fleet.start()
        ready.set()

    asyncio.run_coroutine_threadsafe(_start(), loop).result(30)
    fleet.loop = loop  # type: ignore[attr-defined]
    try:
        yield fleet
    finally:
        asyncio.run_coroutine_threadsafe(fleet.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def call_in_fleet(fleet: SimFleet, coro: Any, timeout: float = 30) -> Any:
    """Run a coroutine on the thread-hosted fleet's loop (e.g. `server.stop()`)."""
    return asyncio.run_coroutine_threadsafe(coro, fleet.loop).result(timeout)  # type: ignore


# ---- command line ------------------------------------------------------------------------
def _lora_module(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--lora-modules takes name=path, got {value!r}")
    return name, path


def add_pod_arguments(p: argparse.ArgumentParser) -> None:
    """The simulated pod's flags (named like vLLM's)."""
    p.add_argument("--model", help="model name or path (default: the profile's model)")
    p.add_argument("--served-model-name", help="name clients use in `model`")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    p.add_argument("--profile", default=DEFAULT_PROFILE, choices=sorted(PROFILES),
                   help="engine profile: model × GPU (default: %(default)s)")
    p.add_argument("--max-loras", type=int, help="LoRA adapters in one batch (profile: 4)")
    p.add_argument("--max-cpu-loras", type=int, help="adapters kept warm in host memory")
    p.add_argument("--lora-modules", nargs="+", type=_lora_module, default=[],
                   metavar="NAME=PATH", help="LoRA adapters served by name")
    p.add_argument("--seed-adapters", action="store_true",
                   help="serve the seed's 10 adapters (sql-lora, sql-lora-1..4, "
                   "tweet-summary, tweet-summary-1..4)")
    p.add_argument("--max-num-seqs", type=int, help="running batch size limit (vLLM: 256)")
    p.add_argument("--max-num-batched-tokens", type=int,
                   help="tokens per iteration (chunked prefill budget)")
    p.add_argument("--gpu-memory-utilization", type=float,
                   help="fraction of GPU memory vLLM may use (sets the KV-cache size)")
    p.add_argument("--max-model-len", type=int, help="context length limit")
    p.add_argument("--num-gpu-blocks-override", dest="num_gpu_blocks", type=int,
                   help="KV blocks (overrides the profile's computation)")
    p.add_argument("--no-enable-prefix-caching", dest="enable_prefix_caching",
                   action="store_false", help="disable automatic prefix caching")
    p.add_argument("--seed", type=int, default=0, help="random seed (pod i uses seed + i)")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="run the model this many times faster than real time (tests)")
    p.add_argument("--metrics-version", choices=["v1", "legacy"], default="v1",
                   help="vLLM metric names: v1 (vLLM >= 0.12) or legacy (V0, as the seed's "
                   "llama2-with-lora:v0.2 image)")


def pod_options(args: argparse.Namespace) -> dict[str, Any]:
    loras = dict(args.lora_modules)
    if args.seed_adapters:
        loras.update({a: f"/adapters/{a}" for a in SEED_ADAPTERS})
    return dict(model=args.model, served_model_name=args.served_model_name,
                profile=args.profile, max_loras=args.max_loras,
                max_cpu_loras=args.max_cpu_loras, lora_modules=loras,
                max_num_seqs=args.max_num_seqs,
                max_num_batched_tokens=args.max_num_batched_tokens,
                gpu_memory_utilization=args.gpu_memory_utilization,
                max_model_len=args.max_model_len, num_gpu_blocks=args.num_gpu_blocks,
                enable_prefix_caching=args.enable_prefix_caching, seed=args.seed,
                time_scale=args.time_scale, metrics_version=args.metrics_version)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sim", help="run simulated vLLM pods (no GPU needed)",
                       description="Run N simulated vLLM pods in one process on consecutive "
                       "ports: OpenAI-compatible API, /metrics with vLLM's names. Ctrl-C stops.")
    p.add_argument("--pods", type=int, default=1, help="number of pods (default: %(default)s)")
    p.add_argument("--base-port", "--port", dest="base_port", type=int, default=8001,
                   help="port of the first pod; pod i listens on base+i (default: %(default)s)")
    add_pod_arguments(p)
    real = p.add_argument_group("real engines (--engine vllm)")
    real.add_argument("--engine", choices=["sim", "vllm"], default="sim",
                      help="sim: simulated pods in this process; vllm: real vLLM OpenAI "
                      "servers (CPU build, from their own venv: `bash scripts/install-vllm`) "
                      "serving the model kit and the seed's ten adapters, or the Hugging Face "
                      "model directory given as --model (default: sim)")
    real.add_argument("--vllm-python", default=None, metavar="PATH",
                      help="with --engine vllm: the vLLM venv's python (default: "
                      "$LLMTRAFFIC_VLLM_PYTHON, else the venv scripts/install-vllm makes)")
    real.add_argument("--pods-file", type=Path, default=None,
                      help="with --engine vllm: write the balancer's pods file here once ready")
    real.add_argument("--log-dir", type=Path, default=None,
                      help="with --engine vllm: pod logs (default: a temporary directory)")
    real.add_argument("--timeout", type=float, default=300,
                      help="with --engine vllm: seconds to wait for every /health")
    p.set_defaults(func=_run_sim)


def _run_sim(args: argparse.Namespace) -> int:
    if args.engine == "vllm":
        from llmtraffic.simulator.vllmfleet import serve
        return serve(args)
    try:
        fleet = SimFleet(args.pods, base_port=args.base_port, host=args.host,
                         **pod_options(args))
    except ValueError as e:
        print(f"llmtraffic sim: {e}")
        return 2
    return asyncio.run(_serve_fleet(fleet))


async def _serve_fleet(fleet: SimFleet) -> int:
    stop = stop_event()
    try:
        await fleet.start()
    except OSError as e:
        print(f"llmtraffic sim: cannot listen: {e}. Pick another --base-port.", flush=True)
        await fleet.stop()
        return 2
    for s in fleet.servers:
        adapters = len(s.options.lora_modules)
        print(f"pod {s.options.name} {s.url}  model={s.model} adapters={adapters} "
              f"profile={s.profile.name} kv_blocks={s.config.num_gpu_blocks}", flush=True)
    await stop.wait()
    await fleet.stop()
    print("stopped", flush=True)
    return 0


__all__ = ["PodOptions", "SimServer", "SimFleet", "run_fleet_in_thread", "call_in_fleet",
           "chat_prompt", "add_parser", "add_pod_arguments", "pod_options"]
