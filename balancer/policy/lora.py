"""LoRA-affinity scorer: adapter already running 1.0 > a free adapter slot 0.8 > adapter
waiting for a slot 0.6 > 0 (it would queue behind a slot). Base-model requests: 1.0."""

from __future__ import annotations

from exporter.store import PodState

RUNNING, FREE_SLOT, WAITING, NONE = 1.0, 0.8, 0.6, 0.0


def lora_score(pod: PodState, adapter: str | None) -> float:
    return lora_scores((pod,), adapter)[0]


def lora_scores(pods: list[PodState] | tuple[PodState, ...],
                adapter: str | None) -> list[float]:
    """One score per pod, from the last known adapters, even when stale: they change
    slowly. (One loop over the pods: the policy calls this for every pod on every pick.)"""
    if adapter is None:
        return [1.0] * len(pods)
    return [FREE_SLOT if (m := pod.metrics) is None
            else RUNNING if adapter in m.running_adapters
            else FREE_SLOT if m.max_lora <= 0 or len(m.running_adapters) < m.max_lora
            else WAITING if adapter in m.waiting_adapters
            else NONE
            for pod in pods]
