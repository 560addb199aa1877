"""`PolicyConfig`: the weights and thresholds of the `llm` policy, with their defaults and
where each default comes from. Apart from the policy so that reading the configuration (the
command line) does not load the policy's numeric code."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from llmtraffic.balancer.policy.prefix import LRU_PER_POD
from llmtraffic.balancer.policy.scorers import SCORERS

#: Queued requests that span the queue scorer's 0..1 (see `PolicyConfig.queue_span`). Virtual
#: time, seed-lora, 4 pods, load 0.9, tuning seeds 1-8, LoRA weight 4: 8 and 16 equal within
#: noise (geometric-mean TTFT p90 2.87 vs 2.89 s); 8 lets a free adapter slot yield to the
#: pod running the adapter from a 3-request queue difference on.
QUEUE_SPAN = 8.0

#: The default scorers, in the order their terms are added, with their weights. Their
#: ranges are honest: each term's full range (weight x 1) is less than the others' together,
#: so a long enough queue or a full KV cache beats any affinity (GIE picks the idle pod over
#: one with 500 waiting and a free adapter slot; so does this).
DEFAULT_SCORERS: dict[str, float] = {
    # with the span, one queued request is worth 3/8 of a point
    "queue": 3.0,
    # virtual time, seed-lora: 2 beat 1 (geometric-mean p90 TTFT -18%) and 3-4
    "kv": 2.0,
    # a pod running the adapter beats one with a free slot by 0.8 points (about 2 queued
    # requests: an adapter load costs tens of ms), and a free slot beats a pod with none by
    # 3.2 (about 8: a request for an adapter with no slot waits for one to drain). Virtual
    # time, seed-lora, 4 pods, load 0.9, tuning seeds 1-8 with the span at 16: 4 gave a
    # geometric-mean p90 of 2.89 s, 2 3.06 s, 12 (the old weight, which let a free slot
    # outweigh any queue) 3.22 s
    "lora": 4.0,
    # must exceed the queue weight so that a pod holding the prefix and one more queued
    # request still wins (virtual time, shared-prefix: 3 -> hit rate 0.61 and p90 TTFT
    # 0.32 s; 6 -> 0.93 and 0.08 s, as the oracle); the prefix term is itself net of the
    # prefill queued ahead, so a long queue still beats a cached prefix
    "prefix": 6.0,
}


class PolicyConfig(BaseModel):
    """Weights and thresholds of the `llm` policy. GIE's defaults were the starting point;
    the weights were tuned in virtual time (`llmtraffic bench routing`, 4 pods, load 0.9,
    llama2-7b-a10 profile) on tuning seeds only (1-16; the README's grid reports other
    seeds): LoRA and KV weights and the queue span on `seed-lora`, the prefix terms on
    `shared-prefix`, then checked on `mixed`, at load 1.0, on 8 pods and with 2 balancer
    replicas."""

    scorers: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_SCORERS), description="the scorers that run, "
        "in this order, and their weights (GIE's weighted scorers); names: "
        f"{', '.join(SCORERS)}. `<name>_weight: w` (e.g. `prefix_weight: 0`) sets one "
        "weight and keeps the others. A scorer at weight 0 adds nothing (prefix affinity "
        "then does not even index prompts)")
    prefix_queue_tokens: float = Field(
        64.0, ge=0, description="least prefill, in tokens, that each request queued on a "
        "pod beyond the shortest queue is taken to cost when it is netted against the "
        "prefill a cached prefix saves there (the pod's moving average of uncached prompt "
        "tokens per request is used when larger). It bounds herding when a pod gets only "
        "full cache hits: a 1,024-token prefix then outweighs at most 16 extra queued "
        "requests (virtual time, shared-prefix with 2 replicas: 0-64 equal, 128 p90 +8%, "
        "256 +50%, 512 x4)")
    queue_span: float = Field(
        QUEUE_SPAN, ge=0, description="queued requests that span the queue scorer's whole "
        "0..1: a smaller spread between the candidates' shortest and longest queue scores "
        "in proportion (a one-request difference weighs 1/queue_span of the queue term), a "
        "larger one is spread over 0..1 as GIE's queue scorer does. 0 = GIE's scorer (any "
        "spread spans 0..1, so one request outweighs everything the queue weight does)")
    queue_threshold: float = Field(5, ge=0, description="saturation: queue at or below "
                                   "this on some fresh pod means not saturated (GIE: 5)")
    kv_threshold: float = Field(0.8, ge=0, le=1, description="saturation: KV usage at or "
                                "below this on some fresh pod (GIE: 0.8)")
    prefix_lru_per_pod: int = Field(LRU_PER_POD, gt=0, description="most prefix index "
                                     "entries per pod (GIE: 31,250)")
    prefix_capacity_factor: float = Field(
        2.0, ge=0, description="size each pod's prefix index from its KV cache: this many "
        "times the index blocks its cache holds (num_gpu_blocks x block_size from "
        "vllm:cache_config_info, a 128-character index block holding 128 / c tokens at "
        "the c characters per token the balancer learned for the model from usage, 4 until "
        "then), at most prefix_lru_per_pod. "
        "A pod cannot hold more prefix than its cache, so a larger index only remembers "
        "evicted prefixes (false hits) and grows the balancer's memory; the factor leaves "
        "room for prompts the cache shares between requests. 0 = always prefix_lru_per_pod. "
        "(A10 llama2-7b pod: 560 x 16 tokens -> 560 entries)")
    retry_after_s: float = Field(1.0, gt=0, description="Retry-After on a shed 429")
    fallbacks: int = Field(2, ge=0, description="next-best pods returned for retries")

    @model_validator(mode="before")
    @classmethod
    def _one_weight_each(cls, data: Any) -> Any:
        """`<scorer>_weight: w` sets that scorer's weight in `scorers` (appended when it
        is not there), so configurations written before `scorers` existed still mean
        what they meant."""
        if not isinstance(data, dict):
            return data
        named = {k: k.removesuffix("_weight") for k in data
                 if k.endswith("_weight") and k.removesuffix("_weight") in SCORERS}
        if not named:
            return data
        data = dict(data)
        scorers = data.get("scorers", DEFAULT_SCORERS)
        scorers = dict(scorers) if isinstance(scorers, dict) else scorers
        for key, name in named.items():
            weight = data.pop(key)
            if isinstance(scorers, dict):
                scorers[name] = weight
        data["scorers"] = scorers
        return data

    @field_validator("scorers")
    @classmethod
    def _known_scorers(cls, scorers: dict[str, float]) -> dict[str, float]:
        for name, weight in scorers.items():
            if name not in SCORERS:
                raise ValueError(f"unknown scorer {name!r}; choose from "
                                 f"{', '.join(SCORERS)}")
            if not 0 <= weight < math.inf:
                raise ValueError(f"scorer {name!r}: weight {weight} must be a number >= 0")
        return scorers

    def weight(self, name: str) -> float:
        """The weight of scorer `name`; 0 when it does not run."""
        return self.scorers.get(name, 0.0)

    # the weights' names before `scorers` existed, still read by older code and tests
    queue_weight = property(lambda self: self.weight("queue"))
    kv_weight = property(lambda self: self.weight("kv"))
    lora_weight = property(lambda self: self.weight("lora"))
    prefix_weight = property(lambda self: self.weight("prefix"))
