"""`PolicyConfig`: the weights and thresholds of the `llm` policy, with their defaults and
where each default comes from. Apart from the policy so that reading the configuration (the
command line) does not load the policy's numeric code."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from llmtraffic.balancer.policy.prefix import LRU_PER_POD
from llmtraffic.balancer.policy.scorers import SCORERS

#: Queued requests that span the queue scorer's 0..1 (see `PolicyConfig.queue_span`): with
#: the queue weight 6, one queued request is worth 6/32 = 0.19 points, and a spread of 32 or
#: more the whole 6.
QUEUE_SPAN = 32.0

#: The default scorers, in the order their terms are added, with their weights. Their
#: ranges are honest: each term's full range (weight x 1) is less than the others' together,
#: and a long queue (the queue term's whole 6) with a full KV cache outweighs a free adapter
#: slot (0.8 x 8 = 6.4), so an idle pod whose slots are full beats one with 500 waiting, a
#: 95% full cache and a free slot, as GIE picks (tests/balancer/policy/test_gie_cases.py).
#: Tuned in virtual time (`llmtraffic bench routing`, llama2-7b-a10 profile with its sourced
#: LoRA costs) on tuning seeds 11, 13, 14 over the cells the old weights lost most in
#: (seed-lora 2 pods at load 0.9 and 1.0, 4 pods at 0.9; shared-prefix 2 pods at 1.0 and 4
#: at 0.9; mixed 2 pods at 0.9), geometric-mean TTFT p90 (failures counted) over
#: greedy-oracle's: these weights 0.72 / 1.23 / 1.14 / 1.07 / 0.98 / 1.69, against 2.07 /
#: 1.96 / 1.03 / 1.79 / - / 1.71 with queue 3 (span 8), LoRA 4, prefix 6. The README's grid
#: reports other seeds.
DEFAULT_SCORERS: dict[str, float] = {
    "queue": 6.0,
    # virtual time, seed-lora (old queue scorer): 2 beat 1 (geometric-mean p90 TTFT -18%)
    # and 3-4
    "kv": 2.0,
    # a pod running the adapter beats one with a free slot by 1.6 points (about 8 queued
    # requests: the request skips an adapter load, 30-100 ms, and the batch a distinct
    # adapter's step cost), and a free slot beats a pod with none by 6.4 (about 34: a
    # request for an adapter with no slot waits for one to drain); 4 lost 1.5-2.9x on 2 pods
    "lora": 8.0,
    # the prefix term is net of the prefill queued ahead (prefix_queue_tokens), so a long
    # queue still beats a cached prefix; 8 beat 6 on shared-prefix, 2 pods, load 1.0 (1.07
    # vs 1.37x greedy-oracle's p90) and equalled it elsewhere
    "prefix": 8.0,
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
        "vllm:cache_config_info, a 128-byte index block holding 128 / b tokens at "
        "the b UTF-8 bytes per token of the request's estimate, whose characters per token "
        "the balancer learned for the model from usage (4 until then), at most prefix_lru_per_pod. "
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
