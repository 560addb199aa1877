"""A pure, clock-agnostic model of one vLLM V1 engine: continuous batching under
`max_num_seqs` / `max_num_batched_tokens` (chunked prefill), paged KV blocks with automatic
prefix caching and LRU eviction, preemption by recompute, LoRA slots, and a step-time model.

`now` is always passed in; `step(now)` runs one iteration and stamps its tokens at
`now + duration`. The real-time server and the virtual-time cluster drive the same code."""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from llmtraffic.simulator.profile import Profile


@dataclass(slots=True)
class EngineConfig:
    """vLLM-named engine knobs (`from_profile` takes them from a `Profile`, where each
    default says where it comes from)."""

    max_num_seqs: int
    max_num_batched_tokens: int
    num_gpu_blocks: int
    max_model_len: int
    block_size: int = 16  # vLLM's default on CUDA (`--block-size`)
    enable_prefix_caching: bool = True  # on by default in vLLM V1
    max_loras: int = 4  # the seed's `--max-loras 4`
    max_cpu_loras: int = 12  # the seed's `--max-cpu-loras 12`

    @classmethod
    def from_profile(cls, profile: Profile, *, gpu_memory_utilization: float | None = None,
                     max_num_seqs: int | None = None, max_loras: int | None = None,
                     max_cpu_loras: int | None = None,
                     max_num_batched_tokens: int | None = None,
                     max_model_len: int | None = None, num_gpu_blocks: int | None = None,
                     enable_prefix_caching: bool = True) -> "EngineConfig":
        cfg = cls(
            max_num_seqs=max_num_seqs or profile.max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens or profile.max_num_batched_tokens,
            num_gpu_blocks=num_gpu_blocks or profile.num_gpu_blocks(gpu_memory_utilization),
            max_model_len=max_model_len or profile.max_model_len,
            block_size=profile.block_size,
            enable_prefix_caching=enable_prefix_caching,
            max_loras=profile.max_loras if max_loras is None else max_loras,
            max_cpu_loras=profile.max_cpu_loras if max_cpu_loras is None else max_cpu_loras)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "num_gpu_blocks",
                     "max_model_len", "block_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_loras < 0 or self.max_cpu_loras < self.max_loras:
            raise ValueError(f"need 0 <= max_loras ({self.max_loras}) <= max_cpu_loras "
                             f"({self.max_cpu_loras})")


@dataclass(slots=True)
class SimRequest:
    """One request and its timeline (filled by the engine)."""

    request_id: str
    prompt_ids: list[int]
    max_tokens: int
    arrival: float
    adapter: str | None = None
    output_len: int | None = None  # tokens before EOS; None => generate max_tokens
    first_scheduled: float | None = None
    first_token: float | None = None
    token_times: list[float] = field(default_factory=list)
    finished_at: float | None = None
    finish_reason: str | None = None
    num_generated: int = 0
    num_cached_tokens: int = 0
    preemptions: int = 0
    # engine-internal state
    num_computed: int = 0  # tokens whose KV is in `blocks`
    blocks: list[int] = field(default_factory=list)
    num_hashed: int = 0  # leading blocks registered in the prefix cache
    _hashes: list[int] | None = None  # chained hashes of the prompt's full blocks
    deferred: bool = False  # skipped for lack of a LoRA slot since it last ran

    @property
    def num_prompt(self) -> int:
        return len(self.prompt_ids)

    @property
    def target_len(self) -> int:
        """Tokens to generate before the request finishes."""
        n = self.max_tokens if self.output_len is None else min(self.output_len, self.max_tokens)
        return max(1, n)


@dataclass(slots=True)
class TokenOutput:
    request: SimRequest
    new_tokens: int
    finished: bool


@dataclass(slots=True)
class StepResult:
    start: float
    duration: float
    outputs: list[TokenOutput]
    num_prefill_tokens: int
    num_decode_seqs: int


@dataclass(slots=True)
class EngineStats:
    """What the engine's /metrics page says. The adapter lists are what vLLM 0.32 builds
    (`LoRARequestStates`): both list, in the order each was first seen, every adapter with
    a request that has produced output and not finished, running or preempted; an adapter
    whose requests all wait for a LoRA slot is in neither, only counted in
    `num_waiting_deferred` (`num_requests_waiting_by_reason{reason="deferred"}`)."""

    num_running: int
    num_waiting: int
    kv_usage: float
    running_adapters: tuple[str, ...]
    waiting_adapters: tuple[str, ...]
    max_loras: int
    prompt_tokens: int
    generation_tokens: int
    prefix_queries: int
    prefix_hits: int
    preemptions: int
    finished: dict[str, int]
    num_waiting_deferred: int = 0


class BlockPool:
    """Paged KV blocks with refcounts; freed blocks that hold a hashed (full) block stay
    reusable through `cached` until evicted, least recently freed first."""

    def __init__(self, num_blocks: int, caching: bool) -> None:
        self.num_blocks = num_blocks
        self.caching = caching
        self.refcount = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.cached: dict[int, int] = {}  # block hash -> block id
        self.used = 0

    def num_free(self) -> int:
        return len(self.free)

    def allocate(self, n: int) -> list[int] | None:
        if n > len(self.free):
            return None
        out = []
        for _ in range(n):
            b, _ = self.free.popitem(last=False)  # LRU eviction
            h = self.block_hash[b]
            if h is not None:
                if self.cached.get(h) == b:
                    del self.cached[h]
                self.block_hash[b] = None
            self.refcount[b] = 1
            out.append(b)
        self.used += n
        return out

    def touch(self, b: int) -> None:
        """Take a reference on a cached block (a prefix hit)."""
        if self.refcount[b] == 0:
            del self.free[b]
            self.used += 1
        self.refcount[b] += 1

    def release(self, blocks: list[int]) -> None:
        # free in reverse so a request's tail blocks are evicted before its prefix
        for b in reversed(blocks):
            self.refcount[b] -= 1
            if self.refcount[b] == 0:
                self.free[b] = None
                self.used -= 1
                if not self.caching or self.block_hash[b] is None:
                    self.free.move_to_end(b, last=False)  # plain blocks go first

    def fork(self) -> "BlockPool":
        """An independent copy (for Engine.predict_ttft)."""
        p = BlockPool.__new__(BlockPool)
        p.num_blocks, p.caching, p.used = self.num_blocks, self.caching, self.used
        p.refcount = self.refcount[:]
        p.block_hash = self.block_hash[:]
        p.free = self.free.copy()
        p.cached = self.cached.copy()
        return p

    def register(self, b: int, h: int) -> None:
        if self.caching and h not in self.cached:
            self.block_hash[b] = h
            self.cached[h] = b


def _adapter_salt(adapter: str | None) -> int:
    return 0 if adapter is None else zlib.crc32(adapter.encode()) + 1


class Engine:
    """One vLLM V1 engine (one data-parallel rank)."""

    def __init__(self, config: EngineConfig, profile: Profile, seed: int = 0) -> None:
        config.validate()
        self.config = config
        self.profile = profile
        self.seed = seed
        self.pool = BlockPool(config.num_gpu_blocks, config.enable_prefix_caching)
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self._by_id: dict[str, SimRequest] = {}
        self.warm_loras: OrderedDict[str, None] = OrderedDict()  # host-memory LRU
        # adapters loaded in GPU slots, least recently loaded first (a fixed eviction order:
        # a set's order would follow string hashes and change with PYTHONHASHSEED)
        self.gpu_loras: OrderedDict[str, None] = OrderedDict()
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.preemptions = 0
        self.finished: dict[str, int] = {}
        # adapter -> its requests that produced output and have not finished, in the order
        # vLLM's LoRARequestStates first saw each adapter (what its lora_requests_info lists)
        self.lora_requests: dict[str, set[str]] = {}
        self.last_step_duration = profile.step_time(0, 1, 0)
        self.busy_until = 0.0  # end of the last step taken (predict_ttft starts there)

    # ---- requests ----------------------------------------------------------------------
    def add_request(self, req: SimRequest, now: float) -> None:
        if req.request_id in self._by_id:
            raise ValueError(f"duplicate request id {req.request_id!r}")
        if not req.prompt_ids:
            raise ValueError("a request needs at least one prompt token")
        if req.num_prompt >= self.config.max_model_len:
            raise ValueError(f"prompt of {req.num_prompt} tokens does not fit "
                             f"max_model_len {self.config.max_model_len}")
        self._by_id[req.request_id] = req
        self.waiting.append(req)

    def abort(self, request_id: str, now: float) -> SimRequest | None:
        req = self._by_id.get(request_id)
        if req is None:
            return None
        if req in self.running:
            self.running.remove(req)
        else:
            try:
                self.waiting.remove(req)
            except ValueError:
                pass
        self._finish(req, "abort", now)
        return req

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    # ---- one iteration -----------------------------------------------------------------
    def step(self, now: float, slowdown: float = 1.0) -> StepResult:
        """One iteration starting at `now`; its duration is the profile's step time ×
        `slowdown` (pods sharing a host's cores, see `Profile.host_contention`)."""
        cfg = self.config
        budget = cfg.max_num_batched_tokens
        scheduled: list[tuple[SimRequest, int]] = []
        preempted = False
        # 1. running requests first (decode tokens and remaining prefill chunks)
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            need = min(req.num_prompt + req.num_generated - req.num_computed, budget)
            if need <= 0:
                i += 1
                continue
            while not self._grow(req, req.num_computed + need):
                victim = self.running.pop()  # the most recently scheduled loses
                self._preempt(victim)
                preempted = True
                if victim is req:
                    break
            else:
                scheduled.append((req, need))
                budget -= need
                i += 1
                continue
            break  # `req` itself was preempted
        # 2. admit waiting requests (not in a step that had to preempt, as vLLM V1)
        cold_loads = 0
        warm_loads = 0
        if not preempted:
            active = {r.adapter for r in self.running if r.adapter is not None}
            skipped: list[SimRequest] = []
            while self.waiting and budget > 0 and len(self.running) < cfg.max_num_seqs:
                req = self.waiting[0]
                ad = req.adapter
                if ad is not None and ad not in active and len(active) >= cfg.max_loras:
                    req.deferred = True  # vLLM's deferred_waiting
                    skipped.append(self.waiting.popleft())  # no LoRA slot: wait, keep order
                    continue
                if not self._admit(req, budget):
                    break
                self.waiting.popleft()
                req.deferred = False
                need = min(req.num_prompt + req.num_generated - req.num_computed, budget)
                self.running.append(req)
                scheduled.append((req, need))
                budget -= need
                if req.first_scheduled is None:
                    req.first_scheduled = now
                if ad is not None and ad not in active:
                    active.add(ad)
                    if ad not in self.gpu_loras:
                        if ad in self.warm_loras:
                            warm_loads += 1
                        else:
                            cold_loads += 1
                        self._load_lora(ad)
            self.waiting.extendleft(reversed(skipped))
        # 3. cost of the iteration
        prefill = decode = context = pairs = decode_context = adapter_tokens = 0
        for req, n in scheduled:
            if req.adapter is not None:
                adapter_tokens += n
            if n == 1 and req.num_computed >= req.num_prompt:
                decode += 1
                decode_context += req.num_computed + 1
            else:
                prefill += n  # prompt chunks and recompute after preemption
                pairs += n * req.num_computed + n * (n + 1) // 2
            context += req.num_computed + n
        adapters = len({r.adapter for r, _ in scheduled if r.adapter is not None})
        duration = 0.0
        if scheduled:
            # with any adapter in the batch, the other tokens go through the LoRA ops too
            # (on CPU; `StepFit.lora_batch_token_s`)
            others = prefill + decode - adapter_tokens if adapters else 0
            duration = (self.profile.step_time(prefill, decode, context, adapters,
                                               prefill_pairs=pairs,
                                               decode_context=decode_context,
                                               adapter_tokens=adapter_tokens,
                                               lora_batch_tokens=others)
                        + cold_loads * self.profile.lora_load_cold_s
                        + warm_loads * self.profile.lora_load_warm_s) * slowdown
            self.last_step_duration = duration
            self.busy_until = now + duration
        end = now + duration
        # 4. advance sequences and sample tokens
        outputs: list[TokenOutput] = []
        for req, n in scheduled:
            req.num_computed += n
            self._register_full_blocks(req)
            if req.num_computed < req.num_prompt + req.num_generated:
                continue  # a prefill chunk, no token yet
            req.num_generated += 1
            self.generation_tokens += 1
            req.token_times.append(end)
            if req.first_token is None:
                req.first_token = end
                if req.adapter is not None:  # its first output: vLLM starts tracking it
                    self.lora_requests.setdefault(req.adapter, set()).add(req.request_id)
            finished = self._check_finished(req)
            if finished:
                self._finish(req, finished, end)
            outputs.append(TokenOutput(req, 1, finished is not None))
        if any(o.finished for o in outputs):
            self.running = [r for r in self.running if r.finished_at is None]
        return StepResult(now, duration, outputs, prefill, decode)

    # ---- KV blocks -----------------------------------------------------------------------
    def _grow(self, req: SimRequest, tokens: int) -> bool:
        need = -(-tokens // self.config.block_size) - len(req.blocks)
        if need <= 0:
            return True
        got = self.pool.allocate(need)
        if got is None:
            return False
        req.blocks.extend(got)
        return True

    def _prompt_hashes(self, req: SimRequest) -> list[int]:
        if req._hashes is None:
            bs = self.config.block_size
            ids = req.prompt_ids
            h = _adapter_salt(req.adapter)
            out = []
            for start in range(0, len(ids) - bs + 1, bs):
                h = hash((h, tuple(ids[start:start + bs])))
                out.append(h)
            req._hashes = out
        return req._hashes

    def _admit(self, req: SimRequest, budget: int) -> bool:
        """Take cached prefix blocks and allocate the first chunk; False if KV is short."""
        bs = self.config.block_size
        hits: list[int] = []
        if self.config.enable_prefix_caching:
            # never hit the whole prompt: its last token is always computed (as vLLM)
            limit = (req.num_prompt - 1) // bs
            cached = self.pool.cached
            for h in self._prompt_hashes(req)[:limit]:
                b = cached.get(h)
                if b is None:
                    break
                hits.append(b)
        total = req.num_prompt + req.num_generated
        need_tokens = len(hits) * bs + min(total - len(hits) * bs, budget)
        need_blocks = -(-need_tokens // bs) - len(hits)
        # cached blocks we are about to touch may sit in the free pool: they do not count
        free_usable = self.pool.num_free() - sum(1 for b in hits if self.pool.refcount[b] == 0)
        if need_blocks > free_usable:
            return False
        for b in hits:
            self.pool.touch(b)
        req.blocks = hits
        req.num_computed = len(hits) * bs
        req.num_hashed = len(hits)
        if req.num_cached_tokens == 0 and req.preemptions == 0:
            self.prompt_tokens += req.num_prompt
            self.prefix_queries += req.num_prompt
            self.prefix_hits += req.num_computed
            req.num_cached_tokens = req.num_computed
        return self._grow(req, need_tokens)

    def _register_full_blocks(self, req: SimRequest) -> None:
        if not self.config.enable_prefix_caching:
            return
        full = min(req.num_computed, req.num_prompt) // self.config.block_size
        if full > req.num_hashed:
            hashes = self._prompt_hashes(req)
            for k in range(req.num_hashed, full):
                self.pool.register(req.blocks[k], hashes[k])
            req.num_hashed = full

    def _preempt(self, req: SimRequest) -> None:
        self.pool.release(req.blocks)
        req.blocks = []
        req.num_computed = 0
        req.num_hashed = 0
        req.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(req)

    # ---- LoRA --------------------------------------------------------------------------
    def _load_lora(self, adapter: str) -> None:
        self.warm_loras[adapter] = None
        self.warm_loras.move_to_end(adapter)
        while len(self.warm_loras) > self.config.max_cpu_loras:
            self.warm_loras.popitem(last=False)
        self.gpu_loras[adapter] = None
        self.gpu_loras.move_to_end(adapter)
        if len(self.gpu_loras) > self.config.max_loras:
            running = {r.adapter for r in self.running}
            for a in list(self.gpu_loras):
                if a not in running and len(self.gpu_loras) > self.config.max_loras:
                    del self.gpu_loras[a]

    # ---- finishing -----------------------------------------------------------------------
    def _check_finished(self, req: SimRequest) -> str | None:
        if req.output_len is not None and req.num_generated >= req.output_len \
                and req.output_len < req.max_tokens:
            return "stop"
        if req.num_generated >= req.max_tokens:
            return "length"
        if req.num_prompt + req.num_generated >= self.config.max_model_len:
            return "length"
        return None

    def _finish(self, req: SimRequest, reason: str, now: float) -> None:
        tracked = self.lora_requests.get(req.adapter) if req.adapter is not None else None
        if tracked is not None:
            tracked.discard(req.request_id)
            if not tracked:
                del self.lora_requests[req.adapter]  # type: ignore[arg-type]
        self.pool.release(req.blocks)
        req.blocks = []
        req.finish_reason = reason
        req.finished_at = now
        self.finished[reason] = self.finished.get(reason, 0) + 1
        self._by_id.pop(req.request_id, None)

    # ---- views ---------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=len(self.running), num_waiting=len(self.waiting),
            kv_usage=self.pool.used / self.config.num_gpu_blocks,
            running_adapters=tuple(self.lora_requests),
            waiting_adapters=tuple(self.lora_requests),
            max_loras=self.config.max_loras, prompt_tokens=self.prompt_tokens,
            generation_tokens=self.generation_tokens, prefix_queries=self.prefix_queries,
            prefix_hits=self.prefix_hits, preemptions=self.preemptions,
            finished=dict(self.finished),
            num_waiting_deferred=sum(1 for r in self.waiting if r.deferred))

    def predict_ttft(self, prompt_ids: list[int], adapter: str | None, now: float,
                     limit: float = math.inf) -> float:
        """TTFT of a request arriving now, if nothing else arrives before its first token:
        a copy of this engine, with the request appended to its waiting queue, is stepped
        until the request's first token (`TTFTProbe`). So queueing behind waiting requests,
        LoRA slots (a slot frees only when every request of some adapter is done), adapter
        loads, prefix-cache hits, KV room and preemption all follow the engine's own rules.

        Stops early and returns a value >= `limit` once the prediction reaches `limit` (for
        a caller that only needs to know whether this pod beats the best one so far)."""
        probe = TTFTProbe(self, prompt_ids, adapter, now)
        while not probe.done and probe.elapsed < limit:
            probe.advance()
        return probe.elapsed

    def _fork(self) -> "Engine":
        """A copy that can be stepped without touching this engine or its requests (the
        copies' token times are not kept)."""
        e = Engine.__new__(Engine)
        e.config, e.profile, e.seed = self.config, self.profile, self.seed
        e.pool = self.pool.fork()
        sink: list[float] = []
        e.running = [_fork_request(r, sink) for r in self.running]
        e.waiting = deque(_fork_request(r, sink) for r in self.waiting)
        e._by_id = {r.request_id: r for r in e.running}
        e._by_id.update((r.request_id, r) for r in e.waiting)
        e.warm_loras = self.warm_loras.copy()
        e.gpu_loras = OrderedDict(self.gpu_loras)
        e.prompt_tokens, e.generation_tokens = self.prompt_tokens, self.generation_tokens
        e.prefix_queries, e.prefix_hits = self.prefix_queries, self.prefix_hits
        e.preemptions = self.preemptions
        e.finished = {}
        e.lora_requests = {a: set(ids) for a, ids in self.lora_requests.items()}
        e.last_step_duration, e.busy_until = self.last_step_duration, self.busy_until
        return e


class TTFTProbe:
    """One request appended to a copy of an engine's queue, stepped one iteration at a
    time until its first token. `elapsed` is its TTFT once `done`, and a lower bound of it
    before; the engine itself is not touched. Stepping starts when the engine's current
    step ends (`Engine.busy_until`), as a driver would run the next iteration."""

    __slots__ = ("sim", "request", "now", "t")

    def __init__(self, engine: Engine, prompt_ids: list[int], adapter: str | None,
                 now: float, output_len: int = 1) -> None:
        self.sim = engine._fork()
        self.request = SimRequest("\x00probe", prompt_ids, output_len, now, adapter)
        self.sim.add_request(self.request, now)
        self.now = now
        self.t = max(now, engine.busy_until)

    @property
    def done(self) -> bool:
        return self.request.first_token is not None

    @property
    def elapsed(self) -> float:
        if self.request.first_token is not None:
            return self.request.first_token - self.now
        return self.t - self.now

    def advance(self) -> None:
        """One engine iteration (no-op once done)."""
        if self.request.first_token is not None:
            return
        res = self.sim.step(self.t)
        if res.duration <= 0 and not res.outputs:
            self.t = math.inf  # nothing can be scheduled, not even on an idle engine
        self.t += res.duration


def _fork_request(r: SimRequest, token_times: list[float]) -> SimRequest:
    return SimRequest(r.request_id, r.prompt_ids, r.max_tokens, r.arrival, r.adapter,
                      r.output_len, r.first_scheduled, r.first_token, token_times,
                      r.finished_at, r.finish_reason, r.num_generated, r.num_cached_tokens,
                      r.preemptions, r.num_computed, list(r.blocks), r.num_hashed, r._hashes,
                      r.deferred)
