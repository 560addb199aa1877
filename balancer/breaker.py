"""Per-pod circuit breaker: a pod whose last `failures` answers in a row were failures (5xx,
failed connect, no response) is left out of every pick for `cooldown` seconds; then one
probe request may go there (half-open), and its answer closes the circuit or opens it again.

Time is passed in (`now`), as in the store, so the same breaker works in virtual time."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Iterable

from llmtraffic.contracts.store import PodState

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(slots=True)
class _Circuit:
    failures: int = 0  # consecutive
    opened_at: float | None = None  # None while closed
    probing: bool = False  # half-open and the probe request is out


class CircuitBreaker:
    """`sent` when a request goes to a pod, then exactly one of `succeeded`, `failed` or
    `abandoned` (no verdict: the client left). `mark(pods, now)` is what the router applies
    to a snapshot: pods that must not be picked get `last_error` set, which the policies'
    `usable` filter skips (all pods stay when every one is broken: the last resort)."""

    def __init__(self, failures: int = 5, cooldown: float = 10.0) -> None:
        if failures < 1:
            raise ValueError(f"circuit breaker: failures must be >= 1, got {failures!r}")
        if not cooldown > 0:
            raise ValueError(f"circuit breaker: cooldown must be > 0 seconds, got {cooldown!r}")
        self.failures = failures
        self.cooldown = cooldown
        self._circuits: dict[str, _Circuit] = {}
        self._open = 0  # circuits not closed: mark() is free while this is 0
        self.opens: dict[str, int] = {}  # address -> times its circuit opened

    # ---- state -----------------------------------------------------------------------
    def state(self, address: str, now: float) -> str:
        c = self._circuits.get(address)
        if c is None or c.opened_at is None:
            return CLOSED
        return OPEN if now - c.opened_at < self.cooldown else HALF_OPEN

    def blocked(self, address: str, now: float) -> bool:
        """No request may go to `address` now: open, or half-open with its probe out."""
        c = self._circuits.get(address)
        if c is None or c.opened_at is None:
            return False
        return c.probing or now - c.opened_at < self.cooldown

    def mark(self, pods: Iterable[PodState], now: float) -> tuple[PodState, ...]:
        """`pods` with every blocked one marked unhealthy (a copy; the store's are shared)."""
        pods = tuple(pods)
        if not self._open:
            return pods
        return tuple(dataclasses.replace(p, last_error=f"circuit open: {self.failures} "
                                         "failed answers in a row")
                     if self.blocked(p.pod.address, now) else p for p in pods)

    # ---- verdicts ----------------------------------------------------------------------
    def sent(self, address: str, now: float) -> None:
        """A request goes to `address`; past the cooldown it is the probe."""
        c = self._circuits.get(address)
        if c is not None and c.opened_at is not None and not c.probing \
                and now - c.opened_at >= self.cooldown:
            c.probing = True
            log.info("circuit of pod %s half-open: sending one probe request", address)

    def succeeded(self, address: str) -> None:
        c = self._circuits.get(address)
        if c is None:
            return
        if c.opened_at is not None:
            if not c.probing:
                return  # an answer to a request sent before the circuit opened
            log.info("circuit of pod %s closed: the probe request succeeded", address)
            self._open -= 1
        del self._circuits[address]

    def failed(self, address: str, now: float) -> bool:
        """Count a failure; True when it opened the circuit."""
        c = self._circuits.setdefault(address, _Circuit())
        if c.opened_at is not None:
            if c.probing:  # the probe failed: another cooldown
                c.opened_at, c.probing = now, False
                self.opens[address] = self.opens.get(address, 0) + 1
                log.warning("circuit of pod %s open again: the probe request failed",
                            address)
                return True
            return False
        c.failures += 1
        if c.failures < self.failures:
            return False
        c.opened_at = now
        self._open += 1
        self.opens[address] = self.opens.get(address, 0) + 1
        log.warning("circuit of pod %s open: %d failed answers in a row; no requests for "
                    "%g s, then one probe", address, c.failures, self.cooldown)
        return True

    def abandoned(self, address: str) -> None:
        """The request ended without a verdict: if it was the probe, another may go."""
        c = self._circuits.get(address)
        if c is not None and c.probing:
            c.probing = False

    def forget(self, addresses: Iterable[str]) -> None:
        """Pods that left the pool."""
        for a in addresses:
            c = self._circuits.pop(a, None)
            if c is not None and c.opened_at is not None:
                self._open -= 1

    def open_circuits(self, now: float) -> dict[str, str]:
        """Address -> open or half_open, for every circuit not closed."""
        return {a: self.state(a, now) for a, c in self._circuits.items()
                if c.opened_at is not None}
