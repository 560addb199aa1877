"""Round-robin: what a Kubernetes Service (or the seed's VirtualService) does. The ring of
usable pods (sorted by address) is kept across picks and rebuilt on membership change."""

from __future__ import annotations

from llmtraffic.balancer.policy.request import LLMRequest, Pick, PolicyHooks, Shed, no_endpoint
from llmtraffic.balancer.policy.ring import UsableRing
from llmtraffic.contracts.store import Snapshot


class RoundRobin(PolicyHooks):
    name = "round-robin"

    def __init__(self, seed: int | None = None) -> None:
        self._next: dict[str, int] = {}
        self._ring = UsableRing(sorted)

    def pick(self, request: LLMRequest, snapshot: Snapshot) -> Pick | Shed:
        pods = self._ring.addresses(request.pool, snapshot)
        if not pods:
            return no_endpoint(snapshot)
        i = self._next.get(request.pool, 0)
        self._next[request.pool] = i + 1
        n = len(pods)
        return Pick(pods[i % n], tuple(pods[(i + k) % n] for k in range(1, min(3, n))),
                    "round-robin")
