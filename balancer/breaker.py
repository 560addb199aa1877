"""Per-pod circuit breaker and outlier ejection: a pod whose last `failures` answers in a
row were failures (5xx, failed connect, no response, broken HTTP, an empty or endless
answer), or that is ejected at once for what it does (`eject`: in flight far beyond what
its metrics claim), is left out of every pick for `cooldown` seconds; then one probe
request may go there (half-open), and its answer closes the circuit or opens it again.

Time is passed in (`now`), as in the store, so the same breaker works in virtual time."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable, Iterable

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
        self.reasons: dict[str, str] = {}  # address -> why its circuit last opened
        #: called with the address whenever a circuit opens (the proxy stops waiting there)
        self.listeners: list[Callable[[str], None]] = []

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

    def probing(self, address: str) -> bool:
        """Half-open with its probe request out."""
        c = self._circuits.get(address)
        return c is not None and c.probing

    def mark(self, pods: Iterable[PodState], now: float) -> tuple[PodState, ...]:
        """`pods` with every blocked one marked unhealthy (a copy; the store's are shared)."""
        pods = tuple(pods)
        if not self._open:
            return pods
        return tuple(dataclasses.replace(p, last_error="circuit open: "
                                         + self.reasons.get(p.pod.address, "failed answers"))
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

    def failed(self, address: str, now: float, reason: str = "") -> bool:
        """Count a failure (`reason` says what the pod did); True when it opened the
        circuit."""
        c = self._circuits.setdefault(address, _Circuit())
        if c.opened_at is not None:
            if c.probing:  # the probe failed: another cooldown
                c.opened_at, c.probing = now, False
                self._opened(address, f"the probe request failed{_why(reason)}")
                log.warning("circuit of pod %s open again: the probe request failed%s",
                            address, _why(reason))
                return True
            return False
        c.failures += 1
        if c.failures < self.failures:
            return False
        self._open_now(c, address, now, f"{c.failures} failed answers in a row{_why(reason)}")
        return True

    def eject(self, address: str, now: float, reason: str) -> bool:
        """Open the circuit of `address` at once (outlier detection judged it by what it
        does); True when it was closed before."""
        c = self._circuits.setdefault(address, _Circuit())
        if c.opened_at is not None:
            return False
        self._open_now(c, address, now, reason)
        return True

    def _open_now(self, c: _Circuit, address: str, now: float, reason: str) -> None:
        c.opened_at = now
        self._open += 1
        self._opened(address, reason)
        log.warning("circuit of pod %s open: %s; no requests for %g s, then one probe",
                    address, reason, self.cooldown)

    def _opened(self, address: str, reason: str) -> None:
        self.opens[address] = self.opens.get(address, 0) + 1
        self.reasons[address] = reason
        for listener in self.listeners:
            listener(address)

    def abandoned(self, address: str) -> None:
        """The request ended without a verdict: if it was the probe, another may go."""
        c = self._circuits.get(address)
        if c is not None and c.probing:
            c.probing = False

    def forget(self, addresses: Iterable[str]) -> None:
        """Pods that left the pool."""
        for a in addresses:
            self.reasons.pop(a, None)
            c = self._circuits.pop(a, None)
            if c is not None and c.opened_at is not None:
                self._open -= 1

    def open_circuits(self, now: float) -> dict[str, str]:
        """Address -> open or half_open, for every circuit not closed."""
        return {a: self.state(a, now) for a, c in self._circuits.items()
                if c.opened_at is not None}


def _why(reason: str) -> str:
    return f" (last: {reason})" if reason else ""
