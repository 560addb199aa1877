"""LoRA-affinity scorer: adapter already running 1.0 > a free adapter slot 0.8 > adapter
waiting for a slot 0.6 > 0 (it would queue behind a slot). Base-model requests: 1.0 (the
scorer has no opinion on them). It decides a pick (`llm:lora`) whose winner runs the adapter."""

from __future__ import annotations

from llmtraffic.balancer.policy.scorer import Candidates, Scorer
from llmtraffic.contracts.store import PodState

RUNNING, FREE_SLOT, WAITING, NONE = 1.0, 0.8, 0.6, 0.0


class LoRAScorer(Scorer):
    name = "lora"
    reason_rank = 1  # after prefix affinity

    def score(self, c: Candidates) -> list[float] | None:
        a = c.request.adapter
        return None if a is None else [lora_score(p, a) for p in c.pods]

    def claims(self, c: Candidates, j: int) -> bool:
        a = c.request.adapter
        return a is not None and lora_score(c.pods[j], a) >= RUNNING


def lora_score(pod: PodState, adapter: str | None) -> float:
    """From the last known adapters, even when stale: they change slowly."""
    if adapter is None:
        return 1.0
    m = pod.metrics
    if m is not None and adapter in m.running_adapters:
        return RUNNING
    base = slot_score(pod)
    if base == NONE and m is not None and adapter in m.waiting_adapters:
        return WAITING
    return base


def slot_score(pod: PodState) -> float:
    """The score of an adapter neither running nor waiting there: FREE_SLOT when the pod
    has a free adapter slot (or no metrics yet), else NONE."""
    m = pod.metrics
    return FREE_SLOT if m is None or m.max_lora <= 0 or len(m.running_adapters) < m.max_lora \
        else NONE
