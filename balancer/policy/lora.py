"""LoRA-affinity scorer: adapter already running 1.0 > a free adapter slot 0.8 > adapter
waiting for a slot 0.6 > 0 (it would queue behind a slot). Base-model requests: 1.0."""

from __future__ import annotations

from exporter.store import PodState

RUNNING, FREE_SLOT, WAITING, NONE = 1.0, 0.8, 0.6, 0.0


def lora_score(pod: PodState, adapter: str | None) -> float:
    if adapter is None:
        return 1.0
    m = pod.metrics  # the last known adapters, even when stale: they change slowly
    if m is None:
        return FREE_SLOT
    return _score(m.running_adapters, m.waiting_adapters, m.max_lora, adapter)


def _score(running: tuple[str, ...], waiting: tuple[str, ...], max_lora: int,
           adapter: str) -> float:
    if adapter in running:
        return RUNNING
    if max_lora <= 0 or len(running) < max_lora:
        return FREE_SLOT
    if adapter in waiting:
        return WAITING
    return NONE
