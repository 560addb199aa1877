"""The row the native core keeps per pod, declared once: `COLUMNS`, the doubles it holds in
this order, and `pod_row`, which builds a pod's row from its `PodState`. csrc/native.h
documents the same columns (enum lt_column); a table refuses other names or another width."""

from __future__ import annotations

from llmtraffic.balancer.policy.lora import slots_free
from llmtraffic.contracts.store import PodState

#: The row's values, as doubles, in this order (1.0 = true, 0.0 = false):
COLUMNS = (
    "queue",      # PodState.queue: waiting + sent since the scrape (in flight when stale)
    "kv_usage",   # PodState.kv_usage: 0..1, 0 when stale
    "fresh",      # the metrics are present and fresh
    "ready",      # the pod is ready
    "usable",     # ready, and its last scrape or connect did not fail (filters.usable)
    "lora_free",  # lora.slots_free: adapter slots free (+inf: no limit known)
)

PodRow = tuple[str, tuple[str, ...], tuple[str, ...], tuple[float, ...]]


def pod_row(state: PodState) -> PodRow:
    """(address, running adapters, waiting adapters, the values of `COLUMNS`)."""
    pod, m = state.pod, state.metrics
    ready = pod.ready
    running, waiting = ((), ()) if m is None else (m.running_adapters, m.waiting_adapters)
    return pod.address, running, waiting, (
        state.queue, state.kv_usage, 1.0 if state.fresh else 0.0, 1.0 if ready else 0.0,
        1.0 if ready and state.last_error is None else 0.0, slots_free(state))
