"""One request's life in the balancer, the same behind the HTTP proxy and the ext_proc
picker: decided or refused, held in flight on a pod while the circuit breaker waits for the
pod's answer, and finished as one `LLMRecord` (stats, token counters, access-log line)."""

from __future__ import annotations

import time
from typing import Any, Mapping

from llmtraffic.balancer.admission import Displaced, QueueFull
from llmtraffic.balancer.core import BalancerCore
from llmtraffic.balancer.router import NO_HEADERS, ApiError, Decision, Saturated
from llmtraffic.balancer.usage import describe, now_iso
from llmtraffic.contracts.record import LLMRecord

#: The status logged for a request the drain deadline cut (Envoy's flag DT: a duration
#: limit ended it).
DRAIN_CUT = 503


class RequestLifecycle:
    """`decide` (or `refuse`); `hold` a pod while it works on the request, telling the
    breaker how it did (`answered`, `failed`), then `release` it; `finish` once, whatever
    happened. `rec` is the record the front end fills along the way."""

    __slots__ = ("core", "t0", "rec", "address", "judged", "cut", "letting", "chars",
                 "delivered")

    def __init__(self, core: BalancerCore, **fields: Any) -> None:
        self.core = core
        self.t0 = time.monotonic()
        self.rec = LLMRecord(start_time=now_iso(), lb_policy=core.policy.name, **fields)
        self.address: str | None = None  # the pod this request holds an in-flight slot on
        self.judged = False  # the breaker heard how that pod answered
        self.cut = False  # ended by the balancer's drain deadline (logged 503 DT)
        self.chars: int | None = None  # the prompt's characters the pod's usage counts
        self.delivered = False  # the client had the whole answer: leaving then is no DC
        self.letting: str | None = None  # let in from this pool's queue, not on a pod yet

    def decide(self, host: str | None, body: dict[str, Any], chat: bool,
               objective: str | None = None, headers: Mapping[str, str] = NO_HEADERS,
               admitted: bool = False) -> Decision:
        """Route the request (ApiError when it is refused) and note what was decided;
        `objective` is its OBJECTIVE_HEADER (an InferenceObjective's name), `headers` what
        LLMRoute rules match on. Saturated when it must queue (see `admit`)."""
        d = self.core.router.decide(host, body, chat, objective, headers, admitted)
        describe(self.rec, d)
        self.chars = d.prompt_chars
        return d

    async def admit(self, host: str | None, body: dict[str, Any], chat: bool,
                    objective: str | None = None,
                    headers: Mapping[str, str] = NO_HEADERS) -> Decision:
        """`decide`, waiting in the admission queue first while the pool has no room: let
        in by priority, then decided again. A full queue is a 429, a wait past
        --queue-timeout a 503, both with Retry-After; a cancelled caller leaves the queue."""
        try:
            return self.decide(host, body, chat, objective, headers)
        except Saturated as s:
            pool, priority = s.pool, s.priority
        adm = self.core.admission
        assert adm is not None, "Router raised Saturated without an admission queue"
        self.rec.pool = pool
        try:
            await adm.wait(pool, priority)
        except (QueueFull, Displaced) as e:
            err = ApiError(429, f"pool {pool!r} is saturated and its admission queue is full "
                           f"({adm.queue.limit} requests waiting, --max-queued)"
                           + (": a request of a higher priority took this one's place"
                              if isinstance(e, Displaced) else "")
                           + f"; priority {priority}. Retry later",
                           retry_after=adm.retry_after)
            err.pool, err.model, err.reason = pool, body.get("model"), "queue_full"
            raise err from None
        except TimeoutError:
            err = ApiError(503, f"pool {pool!r} stayed saturated for the {adm.timeout:g} s "
                           f"this request may wait (--queue-timeout; priority {priority}): "
                           "no pod had room. Retry later", retry_after=adm.retry_after)
            err.pool, err.model, err.reason = pool, body.get("model"), "queue_timeout"
            raise err from None
        self.letting = pool
        try:
            return self.decide(host, body, chat, objective, headers, admitted=True)
        except BaseException:
            self._let_go()
            raise

    def _let_go(self) -> None:
        """A request let in from the queue took its pod or ended: the next may go."""
        if self.letting is not None:
            pool, self.letting = self.letting, None
            if self.core.admission is not None:
                self.core.admission.done(pool)

    def refuse(self, e: ApiError) -> None:
        """The request is answered `e` by the balancer itself; sheds are counted."""
        rec = self.rec
        rec.response_code = e.status
        rec.model, rec.pool = rec.model or e.model, rec.pool or e.pool
        if e.status in (429, 503):
            self.core.stats.refused(rec.pool or "", rec.model or "", e.status, e.reason)
        self._let_go()

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
        self._let_go()  # after acquire: the next one let in sees this request's slot

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
        if self.core.admission is not None:
            self.core.admission.poke()  # a slot freed: a waiter may go

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
        self._let_go()
        self.core.log(rec)
