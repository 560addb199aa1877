"""The LLM-aware policy: filters, then weighted scorers (queue, KV cache, LoRA affinity,
prefix affinity), then the highest score wins (seeded random tie-break)."""

from __future__ import annotations

import random
from typing import Callable, Sequence

import numpy as np

from balancer.policy.columns import PodColumns
from balancer.policy.filters import saturated, usable
from balancer.policy.kvcache import kv_score
from balancer.policy.lora import lora_score
from balancer.policy.prefix import TOKENS_PER_BLOCK, PrefixIndex, block_hashes, net_saved
from balancer.policy.queue import queue_score, queue_scores
from balancer.policy.request import LLMRequest, Pick, Shed, no_endpoint
from balancer.policy.settings import PolicyConfig
from exporter.store import PodState, Snapshot


#: Pools of at least this many pods are scored with vector operations over `PodColumns`;
#: smaller ones pod by pod, which costs less below it (numpy's fixed cost per operation,
#: several µs when cold in a busy proxy, outweighs a short Python loop). Live, 4 pods, with
#: 64-character prefix blocks: median pick 117 µs pod by pod vs 180 µs vectorised;
#: `python -m bench.balancer_overhead` at 1000 pods: ~700 µs vs ~260 µs.
VECTOR_FROM = 48

#: Weight of the newest request in a pod's moving average of uncached prompt tokens.
UNCACHED_EWMA = 0.1


#: What a scoring pass hands the common tail of `pick`: the candidates, their scores (a
#: list or an array, by position), prefix score by position, block hashes, matched blocks.
_Scored = tuple[Sequence[PodState], "list[float] | np.ndarray", dict[int, float], list[int],
                dict[str, int]]


class LLMPolicy:
    name = "llm"

    def __init__(self, config: PolicyConfig | None = None, seed: int | None = None) -> None:
        self.config = config or PolicyConfig()
        self._rng = random.Random(seed)
        self.prefix = PrefixIndex(self.config.prefix_lru_per_pod)
        # per pod: moving average of the uncached prompt tokens of the requests sent there
        # (the prefill work one more queued request stands for)
        self._uncached: dict[str, float] = {}
        self._columns = PodColumns()  # per-pod values kept from pick to pick
        self.vector_from = VECTOR_FROM

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

    def pick(self, request: LLMRequest, snapshot: Snapshot) -> Pick | Shed:
        big = len(snapshot.pods) >= self.vector_from
        scored = self._score_columns(request, snapshot) if big \
            else self._score_pods(request, snapshot)
        if not isinstance(scored, tuple):
            return scored
        states, scores, prefix, hashes, matched = scored
        order = (_ranked if big else _ranked_list)(scores, 1 + self.config.fallbacks,
                                                   self._rng)
        top = states[order[0]]
        if order[0] in prefix:
            best_reason = "prefix"
        elif request.adapter is not None and lora_score(top, request.adapter) >= 1.0:
            best_reason = "lora"
        else:
            best_reason = "load"
        if hashes:
            self.remember(top, request, hashes, matched.get(top.address, 0))
        return Pick(top.address, tuple(states[i].address for i in order[1:]),
                    f"llm:{best_reason}")

    def _score_pods(self, request: LLMRequest, snapshot: Snapshot) -> _Scored | Shed:
        """Small pools: one Python pass per term over the pods."""
        cfg = self.config
        pods = usable(snapshot.pods)
        if not pods:
            return no_endpoint(snapshot)
        queues = [p.queue for p in pods]
        if request.criticality == "Sheddable" and saturated(
                np.array([p.fresh for p in pods]), np.array(queues),
                np.array([p.kv_usage for p in pods]), cfg.queue_threshold, cfg.kv_threshold):
            return self._shed()
        lo, hi = min(queues), max(queues)
        qw, kw = cfg.queue_weight, cfg.kv_weight
        scores = [qw * queue_score(q, lo, hi) + kw * kv_score(p) for q, p in zip(queues, pods)]
        if request.adapter is not None:
            lw, a = cfg.lora_weight, request.adapter
            scores = [s + lw * lora_score(p, a) for s, p in zip(scores, pods)]
        hashes, matched, prefix = self._prefix(request, queues, lambda: {
            p.pod.address: j for j, p in enumerate(pods)})
        for j, x in prefix.items():
            scores[j] += cfg.prefix_weight * x
        return pods, scores, prefix, hashes, matched

    def _score_columns(self, request: LLMRequest, snapshot: Snapshot) -> _Scored | Shed:
        """Large pools: vector operations over columns kept from pick to pick."""
        cfg, cols = self.config, self._columns
        cols.refresh(snapshot.pods)
        # filters.usable: ready and healthy; every ready pod when none is healthy
        where, count = (cols.usable, cols.n_usable) if cols.n_usable else \
            (cols.ready, cols.n_ready)
        if not count:
            return no_endpoint(snapshot)
        sub = None if count == len(where) else np.flatnonzero(where)  # candidate -> column

        def col(a: np.ndarray) -> np.ndarray:
            return a if sub is None else a[sub]
        queues = col(cols.queue)
        if request.criticality == "Sheddable" and saturated(
                col(cols.fresh), queues, col(cols.kv_usage), cfg.queue_threshold,
                cfg.kv_threshold):
            return self._shed()
        scores = cfg.queue_weight * queue_scores(queues) + cfg.kv_weight * col(cols.kv)
        if request.adapter is not None:
            scores = scores + cfg.lora_weight * col(cols.lora(request.adapter))
        hashes, matched, prefix = self._prefix(
            request, queues.tolist(), lambda: cols.index if sub is None else {
                cols.states[c].pod.address: j for j, c in enumerate(sub.tolist())})
        if prefix:
            at = np.fromiter(prefix, np.intp, len(prefix))
            scores[at] += cfg.prefix_weight * np.fromiter(prefix.values(), np.float64,
                                                          len(prefix))
        states = cols.states if sub is None else [cols.states[c] for c in sub.tolist()]
        return states, scores, prefix, hashes, matched

    def _prefix(self, request: LLMRequest, queues: list[float],
                positions: Callable[[], dict[str, int]]) -> \
            tuple[list[int], dict[str, int], dict[int, float]]:
        """The prompt's block hashes, the pods holding a leading run of them, and the
        prefix score of each matched candidate (by position) that is worth anything."""
        cfg = self.config
        hashes = block_hashes(request.adapter or request.target_model, request.prompt) \
            if cfg.prefix_weight > 0 else []
        matched = self.prefix.match(hashes) if hashes else {}
        prefix: dict[int, float] = {}
        if matched:
            ntok, unc, floor = request.prompt_tokens, self._uncached, cfg.prefix_queue_tokens
            q_min, pos = min(queues), positions()
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


def _ranked_list(scores: list[float], k: int, rng: random.Random) -> list[int]:
    """`_ranked` for a list of scores."""
    order = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)[:k + 1]
    best = scores[order[0]]
    if len(order) > 1 and scores[order[1]] == best:
        tied = [i for i, s in enumerate(scores) if s == best]
        first = tied[rng.randrange(len(tied))]
        return [first, *[i for i in order if i != first][:k - 1]]
    return order[:k]


def _ranked(scores: np.ndarray, k: int, rng: random.Random) -> list[int]:
    """Indices of the `k` best scores, best first. The best is drawn uniformly among the
    pods that tie for it (one draw, only on a tie); the rest follow by score, ties in pod
    order."""
    order = np.argsort(-scores, kind="stable")[:k + 1].tolist()
    if len(order) > 1 and scores[order[1]] == scores[order[0]]:  # a tie for the best
        tied = np.flatnonzero(scores == scores[order[0]])
        first = int(tied[rng.randrange(len(tied))])
        return [first, *[i for i in order if i != first][:k - 1]]
    return order[:k]
