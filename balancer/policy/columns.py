"""Per-pod columns the `llm` policy scores, as numpy arrays kept from pick to pick. The
store hands out the same `PodState` object until a pod's entry changes, so each pick
re-reads only the pods whose object changed (one identity pass) and then scores every pod
with a few vector operations instead of a dozen Python passes."""

from __future__ import annotations

from itertools import compress
from operator import is_not

import numpy as np

from balancer.policy.kvcache import kv_score
from balancer.policy.lora import NONE, RUNNING, WAITING, slot_score
from exporter.store import PodState


class PodColumns:
    """Column `k` describes `states[k]`; rebuilt whole when membership or order changes."""

    def __init__(self) -> None:
        self.states: tuple[PodState, ...] = ()
        self._rebuild(())

    def refresh(self, pods: tuple[PodState, ...]) -> None:
        old = self.states
        if len(old) != len(pods):
            self._rebuild(pods)
            return
        changed = list(compress(range(len(pods)), map(is_not, pods, old)))
        if not changed:
            return
        if any(pods[k].pod.address != old[k].pod.address for k in changed):
            self._rebuild(pods)
            return
        self.states = pods
        for k in changed:
            if pods[k].metrics is not old[k].metrics:
                self._lora.clear()
            self._unindex(k, old[k])
            self._set(k, pods[k])

    def lora(self, adapter: str) -> np.ndarray:
        """`lora_score(pod, adapter)` for every pod (read-only: cached until some pod's
        metrics change)."""
        hit = self._lora.get(adapter)
        if hit is not None:
            return hit
        x = self.slot.copy()
        waiting = self._waiting.get(adapter)
        if waiting:
            w = np.fromiter(waiting, np.intp, len(waiting))
            x[w] = np.where(x[w] == NONE, WAITING, x[w])
        running = self._running.get(adapter)
        if running:
            x[np.fromiter(running, np.intp, len(running))] = RUNNING
        x.flags.writeable = False
        self._lora[adapter] = x
        return x

    # ---- upkeep --------------------------------------------------------------------------
    def _rebuild(self, pods: tuple[PodState, ...]) -> None:
        n = len(pods)
        self.states = pods
        self.queue = np.zeros(n)
        self.kv = np.zeros(n)  # kv_score
        self.kv_usage = np.zeros(n)
        self.slot = np.zeros(n)  # slot_score: an adapter neither running nor waiting there
        self.fresh = np.zeros(n, dtype=bool)
        self.ready = np.zeros(n, dtype=bool)
        self.usable = np.zeros(n, dtype=bool)  # ready and no error (filters.usable)
        self.n_ready = self.n_usable = 0
        self.index: dict[str, int] = {p.pod.address: k for k, p in enumerate(pods)}
        self._running: dict[str, set[int]] = {}
        self._waiting: dict[str, set[int]] = {}
        self._lora: dict[str, np.ndarray] = {}  # adapter -> lora(adapter)
        for k, p in enumerate(pods):
            self._set(k, p)

    def _set(self, k: int, p: PodState) -> None:
        self.queue[k] = p.queue
        self.kv[k] = kv_score(p)
        self.kv_usage[k] = p.kv_usage
        self.slot[k] = slot_score(p)
        self.fresh[k] = p.fresh
        ready, usable = p.pod.ready, p.pod.ready and p.last_error is None
        self.n_ready += ready - bool(self.ready[k])
        self.n_usable += usable - bool(self.usable[k])
        self.ready[k], self.usable[k] = ready, usable
        m = p.metrics
        if m is not None:
            for a in m.running_adapters:
                self._running.setdefault(a, set()).add(k)
            for a in m.waiting_adapters:
                self._waiting.setdefault(a, set()).add(k)

    def _unindex(self, k: int, p: PodState) -> None:
        m = p.metrics
        if m is not None:
            for a in m.running_adapters:
                self._running[a].discard(k)
            for a in m.waiting_adapters:
                self._waiting[a].discard(k)
