"""LoRA-affinity scorer, as GIE v1.x's: adapter already running 1.0 > a free adapter slot 0.8 >
adapter waiting for a slot 0.6 > 0 (it would queue behind a slot). Base-model requests: 1.0
(the scorer has no opinion on them). It decides a pick (`llm:lora`) whose winner runs the
adapter.

Slots are counted as real vLLM publishes them: 0.32 lists the same adapters under
`running_lora_adapters` and `waiting_lora_adapters` (each adapter with a request the
scheduler holds) and leaves requests deferred for want of a slot out of both (they are only
in `num_requests_waiting_by_reason{reason="deferred"}`), so the slots in use are the distinct
adapters of both lists plus the deferred requests. A pod that publishes no limit (no
`lora_requests_info` series yet: real vLLM has none until its first LoRA request) counts as
having a free slot, where GIE scores it 0."""

from __future__ import annotations

import math

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
    """The score of an adapter not running there: FREE_SLOT when the pod has a free adapter
    slot (`slots_free` > 0), else NONE."""
    return FREE_SLOT if slots_free(pod) > 0 else NONE


def slots_free(pod: PodState) -> float:
    """Adapter slots free on the pod: max_lora less the distinct adapters running or waiting
    and the requests deferred for a slot; +inf when it publishes no limit (or no metrics)."""
    m = pod.metrics
    if m is None or not m.max_lora > 0:
        return math.inf
    running, waiting = m.running_adapters, m.waiting_adapters
    used = len(set(running).union(waiting)) if waiting else len(running)
    deferred = m.waiting_deferred
    return m.max_lora - used - (deferred if deferred > 0 else 0.0)
