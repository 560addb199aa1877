"""The usable pods' addresses, kept across picks: rebuilt only when the snapshot says the
usable set may have changed (its `version`), else when the addresses themselves differ."""

from __future__ import annotations

from typing import Callable

from llmtraffic.balancer.policy.filters import usable
from llmtraffic.contracts.store import Snapshot


class UsableRing:
    """`addresses(pool, snapshot)`: the usable pods' addresses in `order` (e.g. `sorted`),
    computed once per pool and snapshot version. A snapshot without a version (built by
    hand) costs one pass over its pods to compare, never a re-sort unless they changed."""

    def __init__(self, order: Callable[[list[str]], list[str]] = list) -> None:
        self._order = order
        self._cached: dict[str, tuple[object, list[str]]] = {}  # pool -> (key, addresses)

    def addresses(self, pool: str, snapshot: Snapshot) -> list[str]:
        seen = self._cached.get(pool)
        if snapshot.version is not None:
            key: object = (snapshot.version, len(snapshot.pods))
            if seen is not None and seen[0] == key:
                return seen[1]
            addresses = [p.address for p in usable(snapshot.pods)]
        else:
            addresses = [p.address for p in usable(snapshot.pods)]
            key = tuple(addresses)
            if seen is not None and seen[0] == key:
                return seen[1]
        ring = self._order(addresses)
        self._cached[pool] = (key, ring)
        return ring
