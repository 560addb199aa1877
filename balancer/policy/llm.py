"""The LLM-aware policy: filters (usable pods; for a Sheddable request only pods with room,
else it is shed), then the configured weighted scorers (`PolicyConfig.scorers`:
queue, KV cache, LoRA affinity, prefix affinity), then the highest score wins (seeded random
tie-break). Scored by the native core when it is built (`balancer.policy.native`), else
scorer by scorer in Python: the reference, which the native core matches pick for pick."""

from __future__ import annotations

import random
from typing import Collection

from llmtraffic.balancer.policy import native as native_core
from llmtraffic.balancer.policy.filters import usable, with_room
from llmtraffic.balancer.policy.prefix import (BLOCK_BYTES, TOKENS_PER_BLOCK, PrefixIndex,
                                               block_hashes, index_tokens, utf8_len)
from llmtraffic.balancer.policy.request import LLMRequest, Pick, Shed, no_endpoint
from llmtraffic.balancer.policy.row import COLUMNS, pod_row
from llmtraffic.balancer.policy.scorer import Candidates, Scorer
from llmtraffic.balancer.policy.scorers import SCORERS
from llmtraffic.balancer.policy.settings import PolicyConfig
from llmtraffic.contracts.prompt import CHARS_PER_TOKEN, MAX_RATIO, MIN_RATIO
from llmtraffic.contracts.store import PodState, Snapshot

#: Weight of the newest request in a pod's moving average of uncached prompt tokens.
UNCACHED_EWMA = 0.1

#: Native pod tables kept, one per pool (a table re-reads every pod when handed another
#: pool); past this many pools they are all dropped and rebuilt as pools are seen again.
MAX_TABLES = 64


class LLMPolicy:
    """`native`: None = the native core when built; True = required; False = Python.
    The configuration is read when the policy is made."""

    name = "llm"

    def __init__(self, config: PolicyConfig | None = None, seed: int | None = None,
                 native: bool | None = None) -> None:
        self.config = cfg = config or PolicyConfig()
        self._rng = random.Random(seed)
        #: (scorer, weight) in the configured order: the terms of each candidate's score
        self.scorers: list[tuple[Scorer, float]] = [
            (SCORERS[name](cfg), weight) for name, weight in cfg.scorers.items()]
        #: the scorers that may name a pick's reason, asked in this order
        self._claimants = sorted((s for s, _ in self.scorers if s.reason_rank is not None),
                                 key=lambda s: s.reason_rank)
        self._uses_prefix = any(s.uses_prefix_index and w > 0 for s, w in self.scorers)
        core = native_core.core
        if native and core is None:
            raise RuntimeError(f"the native llm policy is not built: {native_core.missing}")
        self._python_only = [s.name for s, _ in self.scorers
                             if core is not None and s.name not in core.SCORERS]
        if native and self._python_only:
            raise RuntimeError(f"scorer(s) {', '.join(self._python_only)} have no native "
                               "twin (csrc/scorers.c): run the llm policy on its Python core")
        self.native = core is not None and not self._python_only if native is None else native
        self.prefix = (core.PrefixIndex if self.native else PrefixIndex)(cfg.prefix_lru_per_pod)
        self._hashes = core.block_hashes if self.native else block_hashes
        self._tables: dict[str, object] = {}  # pool -> PodTable (native core only)
        # per pod: moving average of the uncached prompt tokens of the requests sent there
        # (the prefill work one more queued request stands for)
        self._uncached: dict[str, float] = {}

    def remember(self, top: PodState, request: LLMRequest, hashes: list[int],
                 matched_blocks: int) -> None:
        """After a pick: the prefix index learns what `top` was sent, and its moving
        average of uncached prompt tokens takes this request's."""
        self.prefix.add(top.address, hashes, self.index_limit(top, bytes_per_token(request)))
        u = max(0, index_tokens(request.prompt) - matched_blocks * TOKENS_PER_BLOCK)
        old = self._uncached.get(top.address)
        self._uncached[top.address] = u if old is None else old + UNCACHED_EWMA * (u - old)

    def index_limit(self, state: PodState, bytes_per_token: float = CHARS_PER_TOKEN) -> int:
        """Prefix-index entries kept for this pod (see `prefix_capacity_factor`): the index
        blocks (BLOCK_BYTES of UTF-8, BLOCK_BYTES / bytes_per_token of the model's tokens
        each) that its KV cache holds, times the factor."""
        cfg, m = self.config, state.metrics
        if m is None or cfg.prefix_capacity_factor <= 0 or m.num_gpu_blocks <= 0 \
                or m.block_size <= 0:
            return cfg.prefix_lru_per_pod
        block_tokens = BLOCK_BYTES / bytes_per_token
        blocks = cfg.prefix_capacity_factor * m.num_gpu_blocks * m.block_size / block_tokens
        return max(1, min(cfg.prefix_lru_per_pod, int(blocks)))

    def forget(self, addresses: Collection[str]) -> None:
        """Pods that left: the prefix index drops what they held."""
        for address in addresses:
            self.prefix.forget(address)

    def startup_warning(self) -> str | None:
        if self.native:
            return None
        if self._python_only:
            return (f"llm policy: scorer(s) {', '.join(self._python_only)} have no native "
                    "twin (csrc/scorers.c), so picks run in pure Python (several times "
                    "slower on large pools)")
        return ("llm policy: the native core is not built, so picks run in pure Python "
                f"(several times slower on large pools): {native_core.missing}")

    def pick(self, request: LLMRequest, snapshot: Snapshot) -> Pick | Shed:
        if self.native:
            return self._pick_native(request, snapshot)
        return self._pick_python(request, snapshot)

    def _pick_native(self, request: LLMRequest, snapshot: Snapshot) -> Pick | Shed:
        """The native core filters, scores and ranks in one call (`PodTable.pick`)."""
        hashes, matched = self._matched(request)
        table = self._tables.get(request.pool)
        if table is None:
            if len(self._tables) >= MAX_TABLES:
                self._tables.clear()
            table = self._tables[request.pool] = self.native_table()
        r = table.pick(snapshot.pods, request.adapter, matched, index_tokens(request.prompt),
                       request.criticality == "Sheddable", self._uncached,
                       self._rng.randrange, 1 + self.config.fallbacks)
        if r.__class__ is int:
            return no_endpoint(snapshot) if r == 503 else self._shed()
        top, fallbacks, reason = r
        if hashes:
            self.remember(top, request, hashes, matched.get(top.pod.address, 0))
        return Pick(top.pod.address, fallbacks, reason)

    def native_table(self) -> object:
        """A native pod table (one per pool) that scores as this policy: its scorers and
        weights, the reasons' order and the parameters, all by name (csrc/table.c)."""
        cfg = self.config
        params = {"queue_threshold": cfg.queue_threshold, "kv_threshold": cfg.kv_threshold}
        for s, _ in self.scorers:
            params.update(s.native_params())
        return native_core.core.PodTable(
            row=pod_row, columns=COLUMNS, scorers={s.name: w for s, w in self.scorers},
            reasons=tuple(s.name for s in self._claimants), params=params)

    def _pick_python(self, request: LLMRequest, snapshot: Snapshot) -> Pick | Shed:
        """The reference: each candidate's score is 0.0 plus weight x score of each
        configured scorer, in order (one Python pass per scorer)."""
        cfg = self.config
        pods = usable(snapshot.pods)
        if not pods:
            return no_endpoint(snapshot)
        if request.criticality == "Sheddable":
            pods = with_room(pods, cfg.queue_threshold, cfg.kv_threshold)
            if not pods:
                return self._shed()
        queues = [p.queue for p in pods]
        hashes, matched = self._matched(request)
        c = Candidates(request, pods, queues, min(queues), max(queues), matched, self._uncached)
        scores = [0.0] * len(pods)
        for scorer, weight in self.scorers:
            part = scorer.score(c) if weight != 0 else None
            if part is not None:
                scores = [s + weight * x for s, x in zip(scores, part)]
        order = _ranked(scores, 1 + cfg.fallbacks, self._rng)
        top = pods[order[0]]
        reason = next((s.name for s in self._claimants if s.claims(c, order[0])), "load")
        if hashes:
            self.remember(top, request, hashes, matched.get(top.address, 0))
        return Pick(top.address, tuple(pods[i].address for i in order[1:]), f"llm:{reason}")

    def _matched(self, request: LLMRequest) -> tuple[list[int], dict[str, int]]:
        """The prompt's block hashes (none when prefix affinity is off) and the pods
        holding a leading run of them."""
        if not self._uses_prefix:
            return [], {}
        hashes = self._hashes(request.adapter or request.target_model, request.prompt)
        return hashes, self.prefix.match(hashes) if hashes else {}

    def _shed(self) -> Shed:
        cfg = self.config
        return Shed(429, "pool saturated: no pod with queue <= "
                    f"{cfg.queue_threshold:g} and KV cache <= {cfg.kv_threshold:g}",
                    cfg.retry_after_s)


def bytes_per_token(request: LLMRequest) -> float:
    """UTF-8 bytes per token behind the request's `prompt_tokens` estimate (whose characters
    per token the balancer learns per model from `usage`, balancer/tokenratio.py): about 3
    for English, 2 for CJK text (3 bytes a character, 0.7 characters a token). Clamped to
    MIN_RATIO..4 x MAX_RATIO (UTF-8 spends up to 4 bytes a character); the default 4 for a
    prompt shorter than one index block or without an estimate."""
    n, size = request.prompt_tokens, utf8_len(request.prompt)
    if n <= 0 or size < BLOCK_BYTES:
        return CHARS_PER_TOKEN
    return min(4 * MAX_RATIO, max(MIN_RATIO, size / n))


def _ranked(scores: list[float], k: int, rng: random.Random) -> list[int]:
    """Indices of the `k` best scores, best first. The best is drawn uniformly among the
    pods that tie for it (one draw, only on a tie); the rest follow by score, ties in pod
    order."""
    order = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)[:k + 1]
    best = scores[order[0]]
    if len(order) > 1 and scores[order[1]] == best:
        tied = [i for i, s in enumerate(scores) if s == best]
        first = tied[rng.randrange(len(tied))]
        return [first, *[i for i in order if i != first][:k - 1]]
    return order[:k]
