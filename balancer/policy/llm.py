"""The LLM-aware policy: filters, then weighted scorers (queue, KV cache, LoRA affinity,
prefix affinity), then the highest score wins (seeded random tie-break). Scored by the
native core when it is built (`balancer.policy.native`), else pod by pod in Python: the
reference, which the native core matches pick for pick."""

from __future__ import annotations

import random
from typing import Collection

from llmtraffic.balancer.policy import native as native_core
from llmtraffic.balancer.policy.filters import saturated, usable
from llmtraffic.balancer.policy.kvcache import kv_score
from llmtraffic.balancer.policy.lora import lora_score
from llmtraffic.balancer.policy.prefix import (TOKENS_PER_BLOCK, PrefixIndex, block_hashes,
    net_saved)
from llmtraffic.balancer.policy.queue import queue_score
from llmtraffic.balancer.policy.request import LLMRequest, Pick, Shed, no_endpoint
from llmtraffic.balancer.policy.settings import PolicyConfig
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
        core = native_core.core
        if native and core is None:
            raise RuntimeError(f"the native llm policy is not built: {native_core.missing}")
        self.native = core is not None if native is None else native
        self.prefix = (core.PrefixIndex if self.native else PrefixIndex)(cfg.prefix_lru_per_pod)
        self._hashes = core.block_hashes if self.native else block_hashes
        self._new_table = core.PodTable if self.native else None
        self._tables: dict[str, object] = {}  # pool -> PodTable (native core only)
        self._weights = (cfg.queue_weight, cfg.kv_weight, cfg.lora_weight, cfg.prefix_weight,
                         cfg.prefix_queue_tokens, cfg.queue_threshold, cfg.kv_threshold,
                         TOKENS_PER_BLOCK)
        # per pod: moving average of the uncached prompt tokens of the requests sent there
        # (the prefill work one more queued request stands for)
        self._uncached: dict[str, float] = {}

    def remember(self, top: PodState, request: LLMRequest, hashes: list[int],
                 matched_blocks: int) -> None:
        """After a pick: the prefix index learns what `top` was sent, and its moving
        average of uncached prompt tokens takes this request's."""
        self.prefix.add(top.address, hashes, self.index_limit(top))
        u = max(0, request.prompt_tokens - matched_blocks * TOKENS_PER_BLOCK)
        old = self._uncached.get(top.address)
        self._uncached[top.address] = u if old is None else old + UNCACHED_EWMA * (u - old)

    def index_limit(self, state: PodState) -> int:
        """Prefix-index entries kept for this pod (see `prefix_capacity_factor`)."""
        cfg, m = self.config, state.metrics
        if m is None or cfg.prefix_capacity_factor <= 0 or m.num_gpu_blocks <= 0 \
                or m.block_size <= 0:
            return cfg.prefix_lru_per_pod
        blocks = cfg.prefix_capacity_factor * m.num_gpu_blocks * m.block_size / TOKENS_PER_BLOCK
        return max(1, min(cfg.prefix_lru_per_pod, int(blocks)))

    def forget(self, addresses: Collection[str]) -> None:
        """Pods that left: the prefix index drops what they held."""
        for address in addresses:
            self.prefix.forget(address)

    def startup_warning(self) -> str | None:
        if self.native:
            return None
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
            table = self._tables[request.pool] = self._new_table()
        r = table.pick(snapshot.pods, request.adapter, matched, request.prompt_tokens,
                       request.criticality == "Sheddable", self._uncached,
                       self._rng.randrange, self._weights, 1 + self.config.fallbacks)
        if r.__class__ is int:
            return no_endpoint(snapshot) if r == 503 else self._shed()
        top, fallbacks, reason = r
        if hashes:
            self.remember(top, request, hashes, matched.get(top.pod.address, 0))
        return Pick(top.pod.address, fallbacks, reason)

    def _pick_python(self, request: LLMRequest, snapshot: Snapshot) -> Pick | Shed:
        """The reference: one Python pass per term over the candidates."""
        cfg = self.config
        pods = usable(snapshot.pods)
        if not pods:
            return no_endpoint(snapshot)
        if request.criticality == "Sheddable" and saturated(pods, cfg.queue_threshold,
                                                            cfg.kv_threshold):
            return self._shed()
        queues = [p.queue for p in pods]
        lo, hi = min(queues), max(queues)
        qw, kw = cfg.queue_weight, cfg.kv_weight
        scores = [qw * queue_score(q, lo, hi) + kw * kv_score(p) for q, p in zip(queues, pods)]
        if request.adapter is not None:
            lw, a = cfg.lora_weight, request.adapter
            scores = [s + lw * lora_score(p, a) for s, p in zip(scores, pods)]
        hashes, matched, prefix = self._prefix(request, pods, queues, lo)
        for j, x in prefix.items():
            scores[j] += cfg.prefix_weight * x
        order = _ranked(scores, 1 + cfg.fallbacks, self._rng)
        top = pods[order[0]]
        if order[0] in prefix:
            reason = "prefix"
        elif request.adapter is not None and lora_score(top, request.adapter) >= 1.0:
            reason = "lora"
        else:
            reason = "load"
        if hashes:
            self.remember(top, request, hashes, matched.get(top.address, 0))
        return Pick(top.address, tuple(pods[i].address for i in order[1:]), f"llm:{reason}")

    def _matched(self, request: LLMRequest) -> tuple[list[int], dict[str, int]]:
        """The prompt's block hashes (none when prefix affinity is off) and the pods
        holding a leading run of them."""
        if self.config.prefix_weight <= 0:
            return [], {}
        hashes = self._hashes(request.adapter or request.target_model, request.prompt)
        return hashes, self.prefix.match(hashes) if hashes else {}

    def _prefix(self, request: LLMRequest, pods: list[PodState], queues: list[float],
                q_min: float) -> tuple[list[int], dict[str, int], dict[int, float]]:
        """The prompt's block hashes, the pods holding a leading run of them, and the
        prefix score of each matched candidate (by position) that is worth anything."""
        cfg = self.config
        hashes, matched = self._matched(request)
        prefix: dict[int, float] = {}
        if matched:
            ntok, unc, floor = request.prompt_tokens, self._uncached, cfg.prefix_queue_tokens
            pos = {p.pod.address: j for j, p in enumerate(pods)}
            for address, m in matched.items():
                j = pos.get(address)
                if j is not None:
                    x = net_saved(m, queues[j] - q_min, max(floor, unc.get(address, ntok)),
                                  ntok)
                    if x > 0:
                        prefix[j] = x
        return hashes, matched, prefix

    def _shed(self) -> Shed:
        cfg = self.config
        return Shed(429, "pool saturated: no pod with queue <= "
                    f"{cfg.queue_threshold:g} and KV cache <= {cfg.kv_threshold:g}",
                    cfg.retry_after_s)


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
