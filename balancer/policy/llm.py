"""The LLM-aware policy: filters, then weighted scorers (queue, KV cache, LoRA affinity,
prefix affinity), then the highest score wins (seeded random tie-break)."""

from __future__ import annotations

import heapq
import random

from pydantic import BaseModel, Field

from balancer.policy.filters import healthy, ready, saturated
from balancer.policy.kvcache import kv_scores
from balancer.policy.lora import lora_score, lora_scores
from balancer.policy.prefix import LRU_PER_POD, PrefixIndex, block_hashes
from balancer.policy.queue import queue_scores
from balancer.policy.request import LLMRequest, Pick, Shed, no_endpoint
from exporter.store import Snapshot


class PolicyConfig(BaseModel):
    """Weights and thresholds of the `llm` policy (defaults tuned in virtual time with
    `llmtraffic bench routing`; GIE's defaults were the starting point)."""

    queue_weight: float = Field(3.0, ge=0, description="queue-depth scorer weight")
    kv_weight: float = Field(1.0, ge=0, description="KV-cache scorer weight")
    lora_weight: float = Field(4.0, ge=0, description="LoRA-affinity scorer weight")
    prefix_weight: float = Field(3.0, ge=0, description="prefix-affinity scorer weight")
    prefix_queue_slack: float = Field(
        2.0, ge=0, description="prefix affinity counts only on pods whose queue is within "
        "this many requests of the shortest (so a cached prefix never wins over a long "
        "queue: GIE's herding problem)")
    queue_threshold: float = Field(5, ge=0, description="saturation: queue at or below "
                                   "this on some fresh pod means not saturated (GIE: 5)")
    kv_threshold: float = Field(0.8, ge=0, le=1, description="saturation: KV usage at or "
                                "below this on some fresh pod (GIE: 0.8)")
    prefix_lru_per_pod: int = Field(LRU_PER_POD, gt=0, description="prefix index entries "
                                     "per pod (GIE: 31,250)")
    retry_after_s: float = Field(1.0, gt=0, description="Retry-After on a shed 429")
    fallbacks: int = Field(2, ge=0, description="next-best pods returned for retries")


class LLMPolicy:
    name = "llm"

    def __init__(self, config: PolicyConfig | None = None, seed: int | None = None) -> None:
        self.config = config or PolicyConfig()
        self._rng = random.Random(seed)
        self.prefix = PrefixIndex(self.config.prefix_lru_per_pod)

    def pick(self, request: LLMRequest, snapshot: Snapshot) -> Pick | Shed:
        cfg = self.config
        pods = healthy(ready(snapshot.pods))
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
        best_reason = ""
        # score = queue + KV (+ LoRA) (+ prefix), summed in that order; one list per term
        # rather than one Python loop doing all per pod (this runs for every pod per pick)
        qw, kw = cfg.queue_weight, cfg.kv_weight
        scores = [qw * q + kw * k for q, k in zip(q_scores, kv)]
        if request.adapter is not None:
            lw = cfg.lora_weight
            scores = [s + lw * x for s, x in zip(scores, lora_scores(pods, request.adapter))]
        if matched:  # index the pods once, then visit only the few matched ones
            limit, pw, nh = q_min + cfg.prefix_queue_slack, cfg.prefix_weight, len(hashes)
            where = {p.pod.address: i for i, p in enumerate(pods)}
            for address, m in matched.items():
                i = where.get(address)
                if i is not None and m and queues[i] <= limit:
                    scores[i] += pw * m / nh
        rand = self._rng.random  # one draw per pod, in pod order: the tie-break
        ranked = zip(scores, [rand() for _ in pods], range(len(pods)))
        k = 1 + cfg.fallbacks  # nlargest(k) = sorted(reverse=True)[:k], cheaper past ~20
        scored = heapq.nlargest(k, ranked) if len(pods) > 20 else sorted(ranked,
                                                                          reverse=True)[:k]
        top = pods[scored[0][2]]
        if matched.get(top.address) and queues[scored[0][2]] <= q_min + cfg.prefix_queue_slack:
            best_reason = "prefix"
        elif request.adapter is not None and lora_score(top, request.adapter) >= 1.0:
            best_reason = "lora"
        else:
            best_reason = "load"
        if hashes:
            self.prefix.add(top.address, hashes)
        return Pick(top.address,
                    tuple(pods[i].address for _, _, i in scored[1:]),
                    f"llm:{best_reason}")
