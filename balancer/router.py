"""The routing decision shared by the proxy and the ext_proc picker: request body -> pool,
InferenceModel, target model (weighted split), policy pick or refusal, and the body to
forward. Refusals are `ApiError`s in OpenAI's error shape."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import orjson

from llmtraffic.balancer.bodyshape import MAX_DEPTH, OFF_LOOP_BYTES, BodyLimits, refusal
from llmtraffic.balancer.config import Model, Pool, Resources
from llmtraffic.balancer.policy.filters import usable
from llmtraffic.balancer.policy.request import LLMRequest, Pick, Policy, Shed
from llmtraffic.balancer.resources import Route, weighted_choice
from llmtraffic.balancer.tokenratio import TokenRatios
from llmtraffic.contracts.store import MetricsStore, PodState, Snapshot

if TYPE_CHECKING:
    from llmtraffic.balancer.admission import Admission
    from llmtraffic.balancer.breaker import CircuitBreaker

MAX_MODEL_CHARS = 256
#: The request header naming its InferenceObjective (GIE), whose priority it takes.
OBJECTIVE_HEADER = "x-gateway-inference-objective"
#: Keys read at the top level: a body naming one twice is ambiguous (orjson keeps the last,
#: another parser in front of us may keep the first), so it is refused.
_READ_KEYS = tuple(f'"{k}"'.encode() for k in ("model", "prompt", "messages", "stream",
                                               "stream_options"))
#: `\u0040`-`\u007f` (letters, `_`, some punctuation) escaped: no encoder does that unasked,
#: but it spells a key such as "model" without the bytes of its name.
_ESCAPED_ASCII = re.compile(rb"\\u00[4-7][0-9a-fA-F]")
#: OpenAI's typed sampling fields: (types accepted, what to say). bool is not an int here.
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "max_tokens": ((int,), "an integer"), "max_completion_tokens": ((int,), "an integer"),
    "n": ((int,), "an integer"), "best_of": ((int,), "an integer"),
    "seed": ((int,), "an integer"), "logprobs": ((int, bool), "an integer or a boolean"),
    "top_logprobs": ((int,), "an integer"), "temperature": ((int, float), "a number"),
    "top_p": ((int, float), "a number"), "presence_penalty": ((int, float), "a number"),
    "frequency_penalty": ((int, float), "a number"), "echo": ((bool,), "true or false"),
    "user": ((str,), "a string"), "suffix": ((str,), "a string"),
    "logit_bias": ((dict,), "an object"), "stop": ((str, list), "a string or a list"),
}


class ApiError(Exception):
    """An error answer: `{"error": {"message", "type", "code"}}` with an HTTP status."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error",
             404: "not_found_error", 408: "request_timeout", 413: "invalid_request_error",
             429: "rate_limit_error",
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
        self.reason: str | None = None  # the shed counter's reason, when not by status

    def body(self) -> bytes:
        return orjson.dumps({"error": {"message": self.message,
                                       "type": self.TYPES.get(self.status, "error"),
                                       "param": self.param, "code": self.status}})

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.retry_after is not None:
            h["Retry-After"] = str(max(1, round(self.retry_after)))
        return h


class Saturated(Exception):
    """The request must wait in the admission queue: its pool has no room (or others of
    the pool wait already). `RequestLifecycle.admit` queues it and decides again."""

    def __init__(self, pool: str, priority: int) -> None:
        super().__init__(f"pool {pool!r} saturated (priority {priority})")
        self.pool = pool
        self.priority = priority


NO_HEADERS: Mapping[str, str] = {}


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
    routed: bool = True  # an InferenceModel names the model (a pod's 404 is then its fault)
    #: the prompt's characters that the pod's usage.prompt_tokens counts (None: it counts
    #: more, such as several prompts, token ids or tool schemas)
    prompt_chars: int | None = None

    def payload(self) -> bytes:
        return orjson.dumps(self.body)

    def stream_events(self, default_tokens: int) -> int:
        """Data events a stream of this request may carry: max_tokens (or
        `default_tokens`) for each of its n choices, plus 64 (role, usage, finish)."""
        b = self.body
        tokens = b.get("max_tokens") or b.get("max_completion_tokens") or default_tokens
        n = max(b.get("n") or 1, b.get("best_of") or 1, 1)
        return max(tokens, 1) * n + 64

    def addresses(self, retries: int) -> list[str]:
        """The pick, then fallbacks: at most 1 + retries distinct addresses."""
        out = [self.pick.address]
        out += [a for a in self.pick.fallbacks if a not in out]
        return out[:1 + retries]


def decode_body(raw: bytes, limits: BodyLimits = BodyLimits(),
                measured: bool = False) -> dict[str, Any]:
    """A request body as a JSON object, or an ApiError that says what is wrong: empty, more
    arrays/objects/values/prompts/messages than `limits` allow (413), nested deeper than
    MAX_DEPTH, not UTF-8, not JSON, not an object, or a key given twice (400). `measured`:
    the caller already checked its shape (`bodyshape.refusal`)."""
    if not raw:
        raise ApiError(400, "request body is empty; send a JSON object with `model`")
    if not measured:
        _refuse_shape(refusal(raw, limits))
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
    _check_counts(body, limits)
    if _maybe_duplicate(raw, body):
        _refuse_duplicates(raw)
    return body


async def decode_body_off_loop(raw: bytes, limits: BodyLimits) -> dict[str, Any]:
    """`decode_body`, measuring a large body's shape in a thread so the event loop serves
    other requests meanwhile."""
    if len(raw) < OFF_LOOP_BYTES:
        return decode_body(raw, limits)
    _refuse_shape(await asyncio.to_thread(refusal, raw, limits))
    return decode_body(raw, limits, measured=True)


def _refuse_shape(refused: tuple[int, str] | None) -> None:
    if refused is not None:
        raise ApiError(*refused)


def _check_counts(body: dict[str, Any], limits: BodyLimits) -> None:
    messages, prompt = body.get("messages"), body.get("prompt")
    if isinstance(messages, list) and len(messages) > limits.messages:
        raise ApiError(413, f"`messages` holds {len(messages)} messages, more than "
                       f"{limits.messages} (--max-messages)", "messages")
    if isinstance(prompt, list) and len(prompt) > limits.prompts and \
            isinstance(prompt[0], str):
        raise ApiError(413, f"`prompt` holds {len(prompt)} prompts, more than "
                       f"{limits.prompts} (--max-prompts)", "prompt")


def _maybe_duplicate(raw: bytes, body: dict[str, Any]) -> bool:
    """Cheap test (byte counts) for a key we read given twice; a hit is checked exactly."""
    if any(raw.count(k) > 1 for k in _READ_KEYS):
        return True
    messages = body.get("messages")
    if isinstance(messages, list) and (raw.count(b'"role"') > len(messages)
                                       or raw.count(b'"content"') > len(messages)):
        return True
    return _ESCAPED_ASCII.search(raw) is not None


def _refuse_duplicates(raw: bytes) -> None:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for k, _ in items:
            if k in seen:
                raise ApiError(400, f"request body gives the key {k[:64]!r} more than once "
                               "in one object; send each key once", k[:64])
            seen.add(k)
        return dict(items)

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except RecursionError:
        raise ApiError(400, f"request body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # orjson read it: the standard parser has no more to say
        pass


def _check_types(body: dict[str, Any]) -> None:
    for key, (types, what) in _FIELD_TYPES.items():
        v = body.get(key)
        if v is None:
            continue
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            raise ApiError(400, f"`{key}` must be {what}, got {type(v).__name__}", key)
    stop = body.get("stop")
    if isinstance(stop, list) and not all(isinstance(x, str) for x in stop):
        raise ApiError(400, "`stop` must be a string or a list of strings", "stop")


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
            role = msg.get("role")
            if not isinstance(role, str):
                raise ApiError(400, f"messages[{i}].role must be a string", "messages")
            content = msg.get("content")
            if isinstance(content, list):
                if not all(isinstance(p, dict) for p in content):
                    raise ApiError(400, f"messages[{i}].content must be a string or a list "
                                   "of content parts (objects)", "messages")
                content = "".join(p.get("text", "") for p in content
                                  if isinstance(p.get("text"), str))
            elif content is None:
                content = ""
            elif not isinstance(content, str):
                raise ApiError(400, f"messages[{i}].content must be a string or a list of "
                               f"content parts, got {type(content).__name__}", "messages")
            parts.append(f"{role}: {content}\n")
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


def _measured_chars(body: dict[str, Any], chat: bool, text: str) -> int | None:
    """len(text) when the pod's usage.prompt_tokens counts that text alone (one string
    prompt, or chat messages without tools); None when it counts more (several prompts,
    token ids, tool schemas), which would teach `TokenRatios` a wrong ratio."""
    if chat:
        return None if body.get("tools") or body.get("functions") else len(text)
    return len(text) if isinstance(body.get("prompt"), str) else None


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
                 clock: Callable[[], float] = time.monotonic, seed: int | None = None,
                 breaker: CircuitBreaker | None = None) -> None:
        self.resources = resources
        self.store = store
        self.policy = policy
        self.clock = clock
        self.breaker = breaker  # pods it blocks reach the policy marked unhealthy
        #: characters per prompt token by target model, learned from the pods' usage
        self.tokens = TokenRatios()
        #: when set, a request whose pool has no room raises Saturated (it is queued)
        self.admission: Admission | None = None
        self._rng = random.Random(seed)
        self._pool_rng = random.Random(None if seed is None else seed + 1)  # route weights
        # (pool, target) -> whether a pod there serves `target` as its base model; valid
        # while membership and the pods' reported model names stay as they were
        self._base: dict[tuple[str, str], bool] = {}
        self._base_version = (-1, -1)

    def pool_for(self, host: str | None, headers: Mapping[str, str] = NO_HEADERS) -> Pool:
        """The pool for a request to `host` with `headers`: the first rule of the host's
        LLMRoute that takes it, then one of that rule's pools by weight. 404 when no route
        serves the host, no rule takes the request, or its rule has no in-cluster pool."""
        res = self.resources
        if not res.routes:
            pool = res.only_pool()
            if pool is None:
                raise ApiError(404, f"no LLMRoute serves host {host!r}; routed hosts: (none)")
            return pool
        route = res.route_for_host(host)
        if route is None:
            hosts = ", ".join(sorted(res.routes))
            raise ApiError(404, f"no LLMRoute serves host {host!r}; routed hosts: {hosts}")
        return self._rule_pool(route, headers)

    def _rule_pool(self, route: Route, headers: Mapping[str, str]) -> Pool:
        rule = route.rule_for(headers)
        if rule is None:
            rules = "; ".join(f"{r.name}: {r.describe()}" for r in route.rules) or "(none)"
            raise ApiError(404, f"no rule of LLMRoute {route.name!r} (host {route.host}) "
                           f"matches this request's headers; its rules: {rules}")
        pools = tuple((p, w) for p, w in rule.pools if p in self.resources.pools)
        if not pools:
            where = ", ".join(f"providerHost {h}" for h in rule.external) or \
                ", ".join(p for p, _ in rule.pools) + " (no such InferencePool)"
            raise ApiError(404, f"LLMRoute {route.name!r} rule {rule.name!r} sends this "
                           f"request to {where}, which llmtraffic does not serve: send it "
                           "through the mesh")
        name = pools[0][0] if len(pools) == 1 else weighted_choice(pools, self._pool_rng)
        return self.resources.pools[name]

    def model_for(self, pool: Pool, name: str, objective: str | None = None) -> Model:
        """What a request for `name` becomes in `pool`: its InferenceModel or
        InferenceModelRewrite rule; a pool with no InferenceModel at all serves whatever its
        pods serve (404 otherwise). The InferenceObjective the request names sets its
        priority."""
        res = self.resources
        model = res.resolve(pool.name, name)
        if model is None and res.models_in(pool.name):
            known = ", ".join(sorted(m.model_name for m in res.models_in(pool.name)))
            raise ApiError(404, f"The model `{name}` does not exist in pool {pool.name!r}; "
                           f"served models: {known or '(none)'}", "model")
        if model is None:
            model = Model(name, pool.namespace, name, "Standard", pool.name, (), 0, "")
        return res.with_objective(model, objective) if objective else model

    def decide(self, host: str | None, body: dict[str, Any], chat: bool,
               objective: str | None = None, headers: Mapping[str, str] = NO_HEADERS,
               admitted: bool = False) -> Decision:
        """Route one decoded body; `objective` is the request's OBJECTIVE_HEADER, `headers`
        what LLMRoute rules match on (names in lower case, or a case-insensitive map).
        Raises ApiError (400/404/429/503), or Saturated when `admission` is set, the pool
        has no room and the request was not `admitted` from the queue already."""
        name = _model_name(body)
        try:
            return self._decide(host, body, chat, name, objective, headers, admitted)
        except ApiError as e:
            e.model = e.model or name
            raise

    def members(self, pool: str) -> Snapshot:
        """The pool's pods now, those the breaker blocks marked unhealthy."""
        snap = self.store.snapshot(self.clock())
        pods = in_pool = snap.in_pool(pool)
        if self.breaker is not None:
            pods = self.breaker.mark(pods, snap.now)
        # the store's health version still describes the pods unless the breaker marked some
        return Snapshot(snap.now, pods, version=snap.version if pods is in_pool else None)

    def pool_has_room(self, pool: str) -> bool:
        """Whether the admission queue may let a request of `pool` in now."""
        adm = self.admission
        return adm is None or adm.has_room(usable(self.members(pool).pods))

    def _decide(self, host: str | None, body: dict[str, Any], chat: bool,
                name: str, objective: str | None, headers: Mapping[str, str],
                admitted: bool) -> Decision:
        pool = self.pool_for(host, headers)  # first: a model the routing does not know is
        model = self.model_for(pool, name, objective)  # a 404, whatever else is wrong
        stream, wants_usage = _stream_flags(body)
        text = prompt_text(body, chat)
        _check_types(body)
        members = self.members(pool.name)
        adm = self.admission
        if adm is not None and not admitted and \
                adm.holds(pool.name, model.priority, usable(members.pods)):
            raise Saturated(pool.name, model.priority)
        target = model.pick_target(self._rng)
        pods = members.pods
        request = LLMRequest(model=name, target_model=target,
                             adapter=None if self._is_base(pool.name, target, pods) else target,
                             prompt=text, prompt_tokens=self.tokens.estimate(target, len(text)),
                             criticality=model.criticality, pool=pool.name,
                             priority=model.priority)
        t0 = time.perf_counter()
        pick = self.policy.pick(request, members)
        took = time.perf_counter() - t0
        if isinstance(pick, Shed):
            err = ApiError(pick.status, f"{pick.reason} (pool {pool.name!r}, model {name!r}, "
                           f"criticality {model.criticality}, priority {model.priority})",
                           retry_after=pick.retry_after)
            err.pool, err.model = pool.name, name
            raise err
        out = dict(body)
        out["model"] = target
        if stream:
            opts = dict(body.get("stream_options") or {})
            opts["include_usage"] = True  # so tokens are counted; dropped again if not asked
            out["stream_options"] = opts
        return Decision(pool, model, request, pick, out, stream, wants_usage, took,
                        routed=bool(self.resources.models_in(pool.name)),
                        prompt_chars=_measured_chars(body, chat, text))


    def _is_base(self, pool: str, target: str, pods: tuple[PodState, ...]) -> bool:
        version = (self.store.generation, self.store.models_version)
        if version != self._base_version:
            self._base.clear()
            self._base_version = version
        known = self._base.get((pool, target))
        if known is None:
            known = self._base[pool, target] = _is_base_model(target, pods)
        return known


def _is_base_model(target: str, pods: tuple[PodState, ...]) -> bool:
    """Whether some pod reports `target` as its base model (`model_name` label); other
    targets are adapters. Stops at the first pod that does."""
    return any(target in m.models for p in pods if (m := p.metrics) is not None)
