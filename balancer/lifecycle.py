"""One request's life in the balancer, the same behind the HTTP proxy and the ext_proc
picker: decided or refused, held in flight on a pod while the circuit breaker waits for the
pod's answer, and finished as one `LLMRecord` (stats, token counters, access-log line)."""

from __future__ import annotations

import time
from typing import Any

from llmtraffic.balancer.core import BalancerCore
from llmtraffic.balancer.router import ApiError, Decision
from llmtraffic.balancer.usage import describe, now_iso
from llmtraffic.contracts.record import LLMRecord

#: The status logged for a request the drain deadline cut (Envoy's flag DT: a duration
#: limit ended it).
DRAIN_CUT = 503


class RequestLifecycle:
    """`decide` (or `refuse`); `hold` a pod while it works on the request, telling the
    breaker how it did (`answered`, `failed`), then `release` it; `finish` once, whatever
    happened. `rec` is the record the front end fills along the way."""

    __slots__ = ("core", "t0", "rec", "address", "judged", "cut", "chars", "delivered")

    def __init__(self, core: BalancerCore, **fields: Any) -> None:
        self.core = core
        self.t0 = time.monotonic()
        self.rec = LLMRecord(start_time=now_iso(), lb_policy=core.policy.name, **fields)
        self.address: str | None = None  # the pod this request holds an in-flight slot on
        self.judged = False  # the breaker heard how that pod answered
        self.cut = False  # ended by the balancer's drain deadline (logged 503 DT)
        self.chars: int | None = None  # the prompt's characters the pod's usage counts
        self.delivered = False  # the client had the whole answer: leaving then is no DC

    def decide(self, host: str | None, body: dict[str, Any], chat: bool,
               objective: str | None = None) -> Decision:
        """Route the request (ApiError when it is refused) and note what was decided;
        `objective` is its OBJECTIVE_HEADER (an InferenceObjective's name)."""
        d = self.core.router.decide(host, body, chat, objective)
        describe(self.rec, d)
        self.chars = d.prompt_chars
        return d

    def refuse(self, e: ApiError) -> None:
        """The request is answered `e` by the balancer itself; sheds are counted."""
        rec = self.rec
        rec.response_code = e.status
        rec.model, rec.pool = rec.model or e.model, rec.pool or e.pool
        if e.status in (429, 503):
            self.core.stats.refused(rec.pool or "", rec.model or "", e.status)

    def hold(self, address: str, pool: str, pick_seconds: float = 0.0,
             attempt: int = 0) -> None:
        """The request is now in flight on `address`: attempt 0 is the pick (its time
        counted), later attempts are retries on the pick's fallbacks."""
        core, rec = self.core, self.rec
        if attempt:
            core.stats.retried(pool)
            pick_seconds = 0.0
        pod = core.store.pod(address)
        rec.upstream_host, rec.pod = address, pod.name if pod else address
        self.address, self.judged = address, False
        core.stats.picked(pool, rec.pod, pick_seconds)
        core.store.acquire(address)
        now = time.monotonic()
        core.held.setdefault(address, {})[self] = now
        core.breaker.sent(address, now)

    def answered(self, status: int) -> None:
        """The held pod answered `status`; the breaker hears it once (5xx is a failure)."""
        if self.address is None or self.judged:
            return
        self.judged = True
        if status >= 500:
            self.core.breaker.failed(self.address, time.monotonic())
        else:
            self.core.breaker.succeeded(self.address)

    def failed(self, error: str | None = None, reason: str = "") -> None:
        """The held pod gave no answer: timed out, or could not be reached (`error`, which
        the store keeps as the pod's last error); `reason` tells the breaker's log."""
        assert self.address is not None, "RequestLifecycle.failed() before hold()"
        now = time.monotonic()
        if error is not None:
            self.core.store.mark_error(self.address, error, now)
        self.judged = True
        self.core.breaker.failed(self.address, now, reason or error or "")

    def strike(self, reason: str) -> None:
        """The held pod answered, but wrongly (broken HTTP, an empty or endless answer, a
        404 for a model the routing sends there): one failure for its breaker, whatever
        was heard before."""
        if self.address is None:
            return
        self.judged = True
        self.core.breaker.failed(self.address, time.monotonic(), reason)

    def move(self, address: str | None) -> None:
        """The gateway sent the request to `address` instead (a fallback): the in-flight
        slot follows it. An address that is not a known pod is ignored."""
        if not address or address == self.address:
            return
        store = self.core.store
        pod = store.pod(address)
        if pod is None:
            return
        if self.address is not None:
            store.release(self.address)
            self.core.held.get(self.address, {}).pop(self, None)
        store.acquire(address)
        self.core.held.setdefault(address, {})[self] = time.monotonic()
        self.address = self.rec.upstream_host = address
        self.rec.pod = pod.name

    def release(self) -> None:
        """The in-flight slot back; a pod not yet judged may be probed again (the client
        left before it answered)."""
        if self.address is None:
            return
        self.core.store.release(self.address)
        self.core.held.get(self.address, {}).pop(self, None)
        if not self.judged:
            self.core.breaker.abandoned(self.address)
        self.address = None

    def finish(self, ended: bool = True) -> None:
        """Once, however the request ended (`ended` False: the client or the gateway closed
        it before the response was complete, flag DC, unless it was `delivered` whole):
        release, learn the target model's characters per token from its usage, log."""
        rec = self.rec
        rec.duration_ms = round((time.monotonic() - self.t0) * 1000, 3)
        if self.cut:
            rec.response_code, rec.response_flags = DRAIN_CUT, "DT"
        elif not ended and not self.delivered:
            rec.response_flags = rec.response_flags or "DC"
        if self.chars is not None and rec.response_code == 200:
            self.core.router.tokens.observe(rec.target_model, self.chars, rec.prompt_tokens)
        self.release()
        self.core.log(rec)
