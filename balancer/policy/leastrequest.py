"""Least-request: fewest requests in flight from this balancer (Envoy's LEAST_REQUEST).
One pass over the usable pods per pick (in-flight counts change on every request)."""

from __future__ import annotations

import heapq
import random

from llmtraffic.balancer.policy.filters import usable
from llmtraffic.balancer.policy.request import LLMRequest, Pick, PolicyHooks, Shed, no_endpoint
from llmtraffic.contracts.store import Snapshot


class LeastRequest(PolicyHooks):
    name = "least-request"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def pick(self, request: LLMRequest, snapshot: Snapshot) -> Pick | Shed:
        pods = usable(snapshot.pods)
        if not pods:
            return no_endpoint(snapshot)
        # the three smallest, as sorting would rank them (one pass, no sort of every pod)
        ranked = heapq.nsmallest(3, pods, key=lambda p: (p.inflight, self._rng.random()))
        return Pick(ranked[0].address, tuple(p.address for p in ranked[1:3]), "least-request")
