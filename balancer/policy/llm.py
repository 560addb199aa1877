"""The LLM-aware policy: filters, then weighted scorers (queue, KV cache, LoRA affinity,
prefix affinity), then the highest score wins (seeded random tie-break)."""

from __future__ import annotations

import heapq
import random

from pydantic import BaseModel, Field

from balancer.policy.filters import saturated, usable
from balancer.policy.kvcache import kv_scores
from balancer.policy.lora import lora_score, lora_scores
from balancer.policy.prefix import (LRU_PER_POD, TOKENS_PER_BLOCK, PrefixIndex, block_hashes,
                                    net_saved)
from balancer.policy.queue import queue_scores
from balancer.policy.request import LLMRequest, Pick, Shed, no_endpoint
from exporter.store import PodState, Snapshot


#: Weight of the newest request in a pod's moving average of uncached prompt tokens.
UNCACHED_EWMA = 0.1


class PolicyConfig(BaseModel):
    """Weights and thresholds of the `llm` policy. GIE's defaults were the starting point;
    the weights were tuned in virtual time (`llmtraffic bench routing`, 4 pods, load 0.9,
    llama2-7b-a10 profile): LoRA and KV weights on `seed-lora` (16 seeds), the prefix terms
    on `shared-prefix` (seeds 1-4), then checked on `mixed`, at load 1.0, on 8 pods and
    with 2 balancer replicas."""

    queue_weight: float = Field(3.0, ge=0, description="queue-depth scorer weight "
                                "(virtual time: 2-3 best on seed-lora; 1 lets LoRA affinity "
                                "pile requests onto busy pods, p90 TTFT x7)")
    kv_weight: float = Field(2.0, ge=0, description="KV-cache scorer weight (virtual time, "
                             "seed-lora: 2 beat 1 (geometric-mean p90 TTFT -18%) and 3-4)")
    lora_weight: float = Field(12.0, ge=0, description="LoRA-affinity scorer weight: with "
                               "it, a pod running the adapter beats one with a free slot by "
                               "2.4 points, less than a full queue-score spread (virtual "
                               "time, seed-lora: 12 best; 4 -> p90 +37%; 14-20 herd the "
                               "popular adapters, p90 +25-65%)")
    prefix_weight: float = Field(6.0, ge=0, description="prefix-affinity scorer weight; "
                                 "must exceed queue_weight so that a pod holding the prefix "
                                 "and one more queued request still wins (virtual time, "
                                 "shared-prefix: 3 -> hit rate 0.61 and p90 TTFT 0.32 s; "
                                 "6 -> 0.93 and 0.08 s, as the oracle)")
    prefix_queue_tokens: float = Field(
        64.0, ge=0, description="least prefill, in tokens, that each request queued on a "
        "pod beyond the shortest queue is taken to cost when it is netted against the "
        "prefill a cached prefix saves there (the pod's moving average of uncached prompt "
        "tokens per request is used when larger). It bounds herding when a pod gets only "
        "full cache hits: a 1,024-token prefix then outweighs at most 16 extra queued "
        "requests (virtual time, shared-prefix with 2 replicas: 0-64 equal, 128 p90 +8%, "
        "256 +50%, 512 x4)")
    queue_threshold: float = Field(5, ge=0, description="saturation: queue at or below "
                                   "this on some fresh pod means not saturated (GIE: 5)")
    kv_threshold: float = Field(0.8, ge=0, le=1, description="saturation: KV usage at or "
                                "below this on some fresh pod (GIE: 0.8)")
    prefix_lru_per_pod: int = Field(LRU_PER_POD, gt=0, description="most prefix index "
                                     "entries per pod (GIE: 31,250)")
    prefix_capacity_factor: float = Field(
        2.0, ge=0, description="size each pod's prefix index from its KV cache: this many "
        "times the 64-character blocks its cache holds (num_gpu_blocks x block_size from "
        "vllm:cache_config_info, at 16 tokens per index block), at most prefix_lru_per_pod. "
        "A pod cannot hold more prefix than its cache, so a larger index only remembers "
        "evicted prefixes (false hits) and grows the balancer's memory; the factor allows "
        "for tokenizers denser than 4 characters per token. 0 = always prefix_lru_per_pod. "
        "(A10 llama2-7b pod: 560 x 16 tokens -> 1,120 entries)")
    retry_after_s: float = Field(1.0, gt=0, description="Retry-After on a shed 429")
    fallbacks: int = Field(2, ge=0, description="next-best pods returned for retries")


class LLMPolicy:
    name = "llm"

    def __init__(self, config: PolicyConfig | None = None, seed: int | None = None) -> None:
        self.config = config or PolicyConfig()
        self._rng = random.Random(seed)
        self.prefix = PrefixIndex(self.config.prefix_lru_per_pod)
        # per pod: moving average of the uncached prompt tokens of the requests sent there
        # (the prefill work one more queued request stands for)
        self._uncached: dict[str, float] = {}

    def index_limit(self, state: PodState) -> int:
        """Prefix-index entries kept for this pod (see `prefix_capacity_factor`)."""
        cfg, m = self.config, state.metrics
        if m is None or cfg.prefix_capacity_factor <= 0 or m.num_gpu_blocks <= 0 \
                or m.block_size <= 0:
            return cfg.prefix_lru_per_pod
        blocks = cfg.prefix_capacity_factor * m.num_gpu_blocks * m.block_size / TOKENS_PER_BLOCK
        return max(1, min(cfg.prefix_lru_per_pod, int(blocks)))

    def pick(self, request: LLMRequest, snapshot: Snapshot) -> Pick | Shed:
        cfg = self.config
        pods = usable(snapshot.pods)
        if not pods:
            return no_endpoint(snapshot)
        if request.criticality == "Sheddable" and saturated(pods, cfg.queue_threshold,
                                                            cfg.kv_threshold):
            return Shed(429, "pool saturated: no pod with queue <= "
                        f"{cfg.queue_threshold:g} and KV cache <= {cfg.kv_threshold:g}",
                        cfg.retry_after_s)
        queues = [p.queue for p in pods]
        q_scores = queue_scores(queues)
        kv = kv_scores(pods)
        hashes = block_hashes(request.adapter or request.target_model, request.prompt) \
            if cfg.prefix_weight > 0 else []
        matched = self.prefix.match(hashes) if hashes else {}
        q_min = min(queues)
        # score = queue + KV (+ LoRA) (+ prefix), summed in that order; one list per term
        # rather than one Python loop doing all per pod (this runs for every pod per pick)
        qw, kw = cfg.queue_weight, cfg.kv_weight
        scores = [qw * q + kw * k for q, k in zip(q_scores, kv)]
        if request.adapter is not None:
            lw = cfg.lora_weight
            scores = [s + lw * x for s, x in zip(scores, lora_scores(pods, request.adapter))]
        prefix: dict[int, float] = {}  # pod index -> prefix score, for the matched pods
        if matched:  # visit only the few matched pods
            ntok, unc, floor = request.prompt_tokens, self._uncached, cfg.prefix_queue_tokens
            for i, p in enumerate(pods):
                m = matched.get(p.pod.address)
                if m is not None:
                    x = net_saved(m, queues[i] - q_min, max(floor, unc.get(p.pod.address, ntok)),
                                  ntok)
                    if x > 0:
                        prefix[i] = x
                        scores[i] += cfg.prefix_weight * x
        order = _ranked(scores, 1 + cfg.fallbacks, self._rng)
        top = pods[order[0]]
        if order[0] in prefix:
            best_reason = "prefix"
        elif request.adapter is not None and lora_score(top, request.adapter) >= 1.0:
            best_reason = "lora"
        else:
            best_reason = "load"
        if hashes:
            self.prefix.add(top.address, hashes, self.index_limit(top))
            u = max(0, request.prompt_tokens - matched.get(top.address, 0) * TOKENS_PER_BLOCK)
            old = self._uncached.get(top.address)
            self._uncached[top.address] = u if old is None else old + UNCACHED_EWMA * (u - old)
        return Pick(top.address, tuple(pods[i].address for i in order[1:]),
                    f"llm:{best_reason}")


def _ranked(scores: list[float], k: int, rng: random.Random) -> list[int]:
    """Indices of the `k` best scores, best first. The best is drawn uniformly among the
    pods that tie for it (one draw, only on a tie); the rest follow by score, ties in pod
    order. (Cheaper than ranking every pod with its own random key.)"""
    best = max(scores)
    tied = [i for i, s in enumerate(scores) if s == best]
    if len(tied) > 1:
        first = tied.pop(rng.randrange(len(tied)))
        if len(tied) >= k - 1:
            return [first, *tied[:k - 1]]
        rest = heapq.nlargest(k, range(len(scores)), key=scores.__getitem__)
        return [first, *[i for i in rest if i != first][:k - 1]]
    return heapq.nlargest(k, range(len(scores)), key=scores.__getitem__) if len(scores) > k \
        else sorted(range(len(scores)), key=scores.__getitem__, reverse=True)
