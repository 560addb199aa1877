"""The admission queue, GIE's flow control on the balancer's side: a request that finds its
pool saturated waits here, bounded in number and in time, and is let in highest priority
first (first come, first served within a priority) as a pod gets room again."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from llmtraffic.balancer.policy.filters import saturated
from llmtraffic.contracts.families import Hist, LabelCap, hist_in
from llmtraffic.contracts.series import QUEUE_WAIT_BUCKETS
from llmtraffic.contracts.store import PodState

#: How a wait ended (the wait histogram's `outcome` label).
ADMITTED, TIMED_OUT, LEFT, DISPLACED = "admitted", "timed_out", "left", "displaced"


class QueueFull(Exception):
    """No place in the queue for the request (`limit` reached, nobody of a lower priority
    to displace)."""


class Displaced(Exception):
    """A request of a higher priority took this waiter's place in the full queue."""


@dataclass(slots=True, eq=False)
class Waiter:
    """One queued request: its pool, priority and arrival order; `gone` once it is off the
    queue (let in, timed out, its client left, displaced)."""

    pool: str
    priority: int
    seq: int
    since: float
    future: asyncio.Future | None = None
    gone: bool = False


@dataclass(slots=True)
class WaitQueue:
    """The ordering alone (no clock, no event loop): per pool, highest priority first and
    FIFO within a priority; at most `limit` waiters over all pools. A full queue makes
    room for a higher priority by displacing its lowest-priority, newest waiter."""

    limit: int
    _heaps: dict[str, list[tuple[int, int, Waiter]]] = field(default_factory=dict)
    _counts: dict[tuple[str, int], int] = field(default_factory=dict)
    _seq: Iterator[int] = field(default_factory=itertools.count)

    def __len__(self) -> int:
        return sum(self._counts.values())

    def waiting(self, pool: str) -> int:
        return sum(n for (p, _), n in self._counts.items() if p == pool)

    def counts(self) -> dict[tuple[str, int], int]:
        """(pool, priority) -> requests waiting now."""
        return {k: n for k, n in self._counts.items() if n}

    def pools(self) -> list[str]:
        """Pools with someone waiting."""
        return sorted({p for (p, _), n in self._counts.items() if n})

    def push(self, pool: str, priority: int, now: float = 0.0
             ) -> tuple[Waiter, Waiter | None]:
        """Queue a request: (its waiter, the waiter it displaced or None). QueueFull when
        the queue is full of requests of this priority or higher."""
        displaced = None
        if len(self) >= self.limit:
            displaced = self._lowest()
            if displaced is None or displaced.priority >= priority:
                raise QueueFull
            self.remove(displaced)
        w = Waiter(pool, priority, next(self._seq), now)
        heapq.heappush(self._heaps.setdefault(pool, []), (-priority, w.seq, w))
        self._counts[pool, priority] = self._counts.get((pool, priority), 0) + 1
        return w, displaced

    def pop(self, pool: str) -> Waiter | None:
        """The next waiter of `pool` to let in, taken off the queue; None when none."""
        heap = self._heaps.get(pool)
        while heap:
            _, _, w = heapq.heappop(heap)
            if not w.gone:
                self.remove(w)
                return w
        self._heaps.pop(pool, None)
        return None

    def remove(self, w: Waiter) -> None:
        """`w` is off the queue (a waiter that left is dropped lazily from its heap)."""
        if not w.gone:
            w.gone = True
            key = (w.pool, w.priority)
            self._counts[key] -= 1
            if not self._counts[key]:
                del self._counts[key]

    def _lowest(self) -> Waiter | None:
        """The waiter a full queue gives up first: lowest priority, newest."""
        live = (w for heap in self._heaps.values() for _, _, w in heap if not w.gone)
        return min(live, key=lambda w: (w.priority, -w.seq), default=None)


def has_room(pods: Sequence[PodState], queue_threshold: float, kv_threshold: float) -> bool:
    """Whether some pod may take one more request now: GIE's saturation rule
    (`filters.saturated`) over the pods with fresh metrics; a pod without them has room
    while this balancer has at most `queue_threshold` requests in flight there (it is
    judged by those, as the policies judge it)."""
    fresh = [p for p in pods if p.fresh]
    if fresh and not saturated(fresh, queue_threshold, kv_threshold):
        return True
    return any(not p.fresh and p.queue <= queue_threshold for p in pods)


class Admission:
    """The queue with its waiting: `holds` says whether a request must queue, `wait` queues
    it until it is let in (or raises QueueFull, Displaced, TimeoutError), `done` says a let-in
    request took its pod (the next one may go), `poke` re-checks every pool with waiters
    (called as requests finish and, while anyone waits, every `poll` seconds: a scrape may
    have shown room). `room(pool)` answers whether the pool has room now."""

    def __init__(self, limit: int, timeout: float, room: Callable[[str], bool],
                 queue_threshold: float, kv_threshold: float, poll: float = 0.25,
                 max_label_values: int = 100, retry_after: float = 1.0) -> None:
        self.queue = WaitQueue(limit)
        self.timeout = timeout
        self.retry_after = retry_after  # told to the requests it refuses
        self.room = room
        self.queue_threshold = queue_threshold
        self.kv_threshold = kv_threshold
        self.poll = poll
        self._letting: dict[str, int] = {}  # pool -> let in, not yet on a pod
        self._ticker: asyncio.Task | None = None
        self.labels = LabelCap(("priority",), max_label_values)
        self.seen: set[tuple[str, str]] = set()  # (pool, priority label) ever queued
        self.waited: dict[tuple[str, str], Hist] = {}  # (pool, outcome) -> wait seconds

    def has_room(self, pods: Sequence[PodState]) -> bool:
        return has_room(pods, self.queue_threshold, self.kv_threshold)

    def holds(self, pool: str, priority: int, pods: Sequence[PodState]) -> bool:
        """Whether a request of `priority` for `pool` (whose usable pods are `pods`) must
        queue: the pool has no room, or others already wait there (no one overtakes them).
        A negative priority on a saturated pool is not held: the policy sheds it; nor is a
        request for a pool with no usable pod: the policy answers 503 at once."""
        if not pods:
            return False
        room = self.has_room(pods)
        if priority < 0 and not room:
            return False
        return not room or self.queue.waiting(pool) > 0 or self._letting.get(pool, 0) > 0

    async def wait(self, pool: str, priority: int) -> float:
        """Queue a request until it is let in; the seconds it waited. Raises QueueFull,
        Displaced or TimeoutError (after `timeout` seconds); a cancelled caller (its
        client left) leaves the queue."""
        t0 = time.monotonic()
        w, displaced = self.queue.push(pool, priority, t0)
        if displaced is not None and displaced.future is not None \
                and not displaced.future.done():
            displaced.future.set_exception(Displaced())
        w.future = asyncio.get_running_loop().create_future()
        self.seen.add((pool, self.labels("priority", priority)))
        self._tick()
        self.wake(pool)
        outcome = ADMITTED
        try:
            async with asyncio.timeout(self.timeout):
                await w.future
        except TimeoutError:
            outcome = TIMED_OUT
            raise
        except Displaced:
            outcome = DISPLACED
            raise
        except asyncio.CancelledError:
            outcome = LEFT
            raise
        finally:
            self.queue.remove(w)
            f = w.future
            if outcome != ADMITTED and f.done() and not f.cancelled() and f.exception() is None:
                self.done(pool)  # let in, but it ended before it took a pod
            waited = time.monotonic() - t0
            hist_in(self.waited, (pool, outcome), QUEUE_WAIT_BUCKETS).observe(waited)
        return waited

    def wake(self, pool: str) -> None:
        """Let the next waiter of `pool` in if the pool has room and nobody let in before
        is still on the way to its pod (one at a time: each sees the last one's slot)."""
        if self._letting.get(pool, 0) or not self.queue.waiting(pool) or not self.room(pool):
            return
        w = self.queue.pop(pool)
        if w is not None and w.future is not None and not w.future.done():
            self._letting[pool] = 1
            w.future.set_result(None)

    def done(self, pool: str) -> None:
        """A request let in has taken its pod (or ended): the next one may be let in."""
        if self._letting.get(pool, 0):
            self._letting[pool] -= 1
        self.wake(pool)

    def poke(self) -> None:
        """Room may have freed somewhere: wake every pool with waiters."""
        for pool in self.queue.pools():
            self.wake(pool)

    def _tick(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._run(),
                                                                  name="admission")

    async def _run(self) -> None:
        while len(self.queue):
            await asyncio.sleep(self.poll)
            self.poke()

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()

    def lengths(self) -> dict[tuple[str, str], int]:
        """(pool, priority label) -> requests waiting now, 0 for every pair seen before."""
        out = dict.fromkeys(self.seen, 0)
        for (pool, priority), n in self.queue.counts().items():
            key = (pool, self.labels("priority", priority))
            out[key] = out.get(key, 0) + n
        return out
