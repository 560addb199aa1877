"""`SCORERS`: the llm policy's scorers by name, what `PolicyConfig.scorers` may name. A new
scorer is a `Scorer` in its own module, one entry here and its test (and, to run on the
native core, a twin in csrc/scorers.c)."""

from __future__ import annotations

from llmtraffic.balancer.policy.kvcache import KVCacheScorer
from llmtraffic.balancer.policy.lora import LoRAScorer
from llmtraffic.balancer.policy.prefix import PrefixScorer
from llmtraffic.balancer.policy.queue import QueueScorer
from llmtraffic.balancer.policy.scorer import Scorer

SCORERS: dict[str, type[Scorer]] = {
    s.name: s for s in (QueueScorer, KVCacheScorer, LoRAScorer, PrefixScorer)}
