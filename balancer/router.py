"""The routing decision shared by the proxy and the ext_proc picker: request body -> pool,
InferenceModel, target model (weighted split), policy pick or refusal, and the body to
forward. Refusals are `ApiError`s in OpenAI's error shape."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import orjson

from balancer.config import Model, Pool, Resources
from balancer.policy.request import LLMRequest, Pick, Policy, Shed
from exporter.store import MetricsStore, Snapshot

CHARS_PER_TOKEN = 4  # prompt-size estimate for routing (vLLM's tokenizer is not here)
MAX_MODEL_CHARS = 256


class ApiError(Exception):
    """An error answer: `{"error": {"message", "type", "code"}}` with an HTTP status."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error",
             404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error",
             502: "upstream_error", 503: "service_unavailable", 504: "upstream_timeout"}

    def __init__(self, status: int, message: str, param: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.pool: str | None = None  # where known: for logs and the shed counter
        self.model: str | None = None

    def body(self) -> bytes:
        return orjson.dumps({"error": {"message": self.message,
                                       "type": self.TYPES.get(self.status, "error"),
                                       "param": self.param, "code": self.status}})

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.retry_after is not None:
            h["Retry-After"] = str(max(1, round(self.retry_after)))
        return h


@dataclass(slots=True)
class Decision:
    """A routed request: where it goes and what to send there."""

    pool: Pool
    model: Model
    request: LLMRequest
    pick: Pick
    body: dict[str, Any]  # rewritten: target model, and include_usage for streams
    stream: bool
    client_wants_usage: bool  # the client asked for the usage chunk itself
    pick_seconds: float

    def payload(self) -> bytes:
        return orjson.dumps(self.body)

    def addresses(self, retries: int) -> list[str]:
        """The pick, then fallbacks: at most 1 + retries distinct addresses."""
        out = [self.pick.address]
        out += [a for a in self.pick.fallbacks if a not in out]
        return out[:1 + retries]


def decode_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or a 400 that says what is wrong."""
    if not raw:
        raise ApiError(400, "request body is empty; send a JSON object with `model`")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return body


def _model_name(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None or model == "":
        raise ApiError(400, "`model` is required", "model")
    if not isinstance(model, str):
        raise ApiError(400, f"`model` must be a string, got {type(model).__name__}", "model")
    if len(model) > MAX_MODEL_CHARS or not model.isprintable():
        raise ApiError(400, "`model` must be printable text of at most "
                       f"{MAX_MODEL_CHARS} characters", "model")
    return model


def prompt_text(body: dict[str, Any], chat: bool) -> str:
    """The text the prompt starts with (for prefix affinity and a token estimate)."""
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "`messages` must be a non-empty list", "messages")
        parts = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                raise ApiError(400, f"messages[{i}] must be an object", "messages")
            content = msg.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content
                                  if isinstance(p, dict) and isinstance(p.get("text"), str))
            elif not isinstance(content, str):
                content = ""
            parts.append(f"{msg.get('role', '')}: {content}\n")
        return "".join(parts)
    if "prompt" not in body:
        raise ApiError(400, "`prompt` is required", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return " ".join(map(str, prompt))
    raise ApiError(400, "`prompt` must be a string, a list of strings or a list of token ids",
                   "prompt")


def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "`stream` must be true or false", "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise ApiError(400, "`stream_options` must be an object", "stream_options")
    return stream, bool(stream and opts and opts.get("include_usage"))


class Router:
    """Pool by host (LLMRoute), model by name (InferenceModel), then the policy's pick."""

    def __init__(self, resources: Resources, store: MetricsStore, policy: Policy,
                 clock: Callable[[], float] = time.monotonic, seed: int | None = None) -> None:
        self.resources = resources
        self.store = store
        self.policy = policy
        self.clock = clock
        self._rng = random.Random(seed)

    def pool_for(self, host: str | None) -> Pool:
        pool = self.resources.pool_for_host(host)
        if pool is None:
            hosts = ", ".join(sorted(self.resources.routes)) or "(none)"
            raise ApiError(404, f"no LLMRoute serves host {host!r}; routed hosts: {hosts}")
        return pool

    def model_for(self, pool: Pool, name: str) -> Model:
        model = self.resources.model(pool.name, name)
        if model is None and not self.resources.models_in(pool.name):
            # a pool with no InferenceModel at all serves whatever its pods serve
            return Model(name, pool.namespace, name, "Standard", pool.name, ())
        if model is None:
            known = ", ".join(sorted(m.model_name for m in self.resources.models_in(pool.name)))
            raise ApiError(404, f"The model `{name}` does not exist in pool {pool.name!r}; "
                           f"served models: {known or '(none)'}", "model")
        return model

    def decide(self, host: str | None, body: dict[str, Any], chat: bool) -> Decision:
        """Route one decoded body; raises ApiError (400/404/429/503)."""
        name = _model_name(body)
        try:
            return self._decide(host, body, chat, name)
        except ApiError as e:
            e.model = e.model or name
            raise

    def _decide(self, host: str | None, body: dict[str, Any], chat: bool,
                name: str) -> Decision:
        stream, wants_usage = _stream_flags(body)
        text = prompt_text(body, chat)
        pool = self.pool_for(host)
        model = self.model_for(pool, name)
        target = model.pick_target(self._rng)
        snap = self.store.snapshot(self.clock())
        members = Snapshot(snap.now, snap.in_pool(pool.name))
        request = LLMRequest(model=name, target_model=target,
                             adapter=None if target in _base_models(members) else target,
                             prompt=text, prompt_tokens=len(text) // CHARS_PER_TOKEN + 1,
                             criticality=model.criticality, pool=pool.name)
        t0 = time.perf_counter()
        pick = self.policy.pick(request, members)
        took = time.perf_counter() - t0
        if isinstance(pick, Shed):
            err = ApiError(pick.status, f"{pick.reason} (pool {pool.name!r}, model {name!r}, "
                           f"criticality {model.criticality})", retry_after=pick.retry_after)
            err.pool, err.model = pool.name, name
            raise err
        out = dict(body)
        out["model"] = target
        if stream:
            opts = dict(body.get("stream_options") or {})
            opts["include_usage"] = True  # so tokens are counted; dropped again if not asked
            out["stream_options"] = opts
        return Decision(pool, model, request, pick, out, stream, wants_usage, took)


def _base_models(snapshot: Snapshot) -> set[str]:
    """Base model names the pods report (`model_name` labels); other targets are adapters."""
    return {m for p in snapshot.pods if p.metrics is not None for m in p.metrics.models}
