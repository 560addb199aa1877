"""Uniform random choice (seeded); the usable pods' list is kept across picks."""

from __future__ import annotations

import random

from llmtraffic.balancer.policy.request import LLMRequest, Pick, PolicyHooks, Shed, no_endpoint
from llmtraffic.balancer.policy.ring import UsableRing
from llmtraffic.contracts.store import Snapshot


class RandomPick(PolicyHooks):
    name = "random"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)
        self._ring = UsableRing()

    def pick(self, request: LLMRequest, snapshot: Snapshot) -> Pick | Shed:
        pods = self._ring.addresses(request.pool, snapshot)
        if not pods:
            return no_endpoint(snapshot)
        order = self._rng.sample(pods, min(3, len(pods)))
        return Pick(order[0], tuple(order[1:]), "random")
