"""Round-robin: what a Kubernetes Service (or the seed's VirtualService) does."""

from __future__ import annotations

from llmtraffic.balancer.policy.filters import usable
from llmtraffic.balancer.policy.request import LLMRequest, Pick, PolicyHooks, Shed, no_endpoint
from llmtraffic.contracts.store import Snapshot


class RoundRobin(PolicyHooks):
    name = "round-robin"

    def __init__(self, seed: int | None = None) -> None:
        self._next: dict[str, int] = {}

    def pick(self, request: LLMRequest, snapshot: Snapshot) -> Pick | Shed:
        pods = sorted(p.address for p in usable(snapshot.pods))
        if not pods:
            return no_endpoint(snapshot)
        i = self._next.get(request.pool, 0)
        self._next[request.pool] = i + 1
        n = len(pods)
        return Pick(pods[i % n], tuple(pods[(i + k) % n] for k in range(1, min(3, n))),
                    "round-robin")
