"""When each pod is scraped next: scrapes spread over the interval with jitter (never every
pod at once), the interval stretched to the pod count by a budget of scrapes per second,
and the rate cut to what this process achieves when it falls behind its own plan."""

from __future__ import annotations

import heapq
import random
from typing import Iterable

#: Each pod's next scrape comes one period later, give or take this fraction (jitter).
JITTER = 0.1
#: A plan behind by more than this fraction of a period counts as falling behind.
BEHIND = 0.5
#: Never plan fewer scrapes per second than this, whatever was measured.
MIN_RATE = 1.0
#: A window that started fewer than this fraction of the planned scrapes fell short.
SHORT = 0.9


class ScrapeSchedule:
    """Per-pod due times in one heap. `period` is the time between two scrapes of one pod:
    `interval`, or longer when the pods at `rate` scrapes per second need longer. `rate`
    starts at `budget` and follows what the process measures (`adapt`): cut to the rate
    achieved when the process fell behind, grown back by a tenth per window otherwise.
    Time is passed in, never read."""

    def __init__(self, interval: float, budget: float, seed: int | None = None) -> None:
        if not interval > 0:
            raise ValueError(f"scrape schedule: interval must be > 0 seconds, got {interval!r}")
        if not budget > 0:
            raise ValueError(f"scrape schedule: budget must be > 0 scrapes per second, got "
                             f"{budget!r}")
        self.interval = interval
        self.budget = budget
        self.rate = float(budget)
        self._rng = random.Random(seed)
        self._due: dict[str, float] = {}  # address -> when its next scrape is due
        self._heap: list[tuple[float, str]] = []  # (due, address); stale entries skipped
        self._late = 0.0  # how far behind its due time the latest scrape started

    @property
    def period(self) -> float:
        """Seconds between two scrapes of one pod at the current rate and pod count."""
        return max(self.interval, len(self._due) / self.rate)

    def __len__(self) -> int:
        return len(self._due)

    def set_pods(self, addresses: Iterable[str], now: float) -> None:
        """Follow membership: a new pod's first scrape falls at a random point of the next
        period (so pods added together are spread), pods that left are dropped."""
        wanted = set(addresses)
        for address in [a for a in self._due if a not in wanted]:
            del self._due[address]
        new = [a for a in wanted if a not in self._due]
        for address in new:
            self._due[address] = 0.0  # counted before the period is drawn
        period = self.period
        for address in sorted(new):
            self._push(address, now + self._rng.random() * period)
        if len(self._heap) > 2 * len(self._due) + 64:  # drop the left pods' entries
            self._heap = [(d, a) for d, a in self._heap if self._due.get(a) == d]
            heapq.heapify(self._heap)

    def due(self, now: float, limit: int | None = None) -> list[str]:
        """Pods whose scrape is due at `now`, earliest first, at most `limit` (the rest stay
        due); each is planned again one jittered period after its due time (or within the
        next period, when that has passed too: a plan far behind is spread again, not
        caught up in a burst)."""
        out: list[str] = []
        heap, period = self._heap, self.period
        if limit is None:
            limit = len(heap)
        while heap and heap[0][0] <= now and len(out) < limit:
            due, address = heapq.heappop(heap)
            if self._due.get(address) != due:
                continue  # left, or planned again
            out.append(address)
            self._late = max(self._late, now - due)
            nxt = due + period * (1.0 + JITTER * (2.0 * self._rng.random() - 1.0))
            if nxt <= now:
                nxt = now + self._rng.random() * period
            self._push(address, nxt)
        return out

    def next_at(self) -> float | None:
        """When the earliest planned scrape is due (None with no pods)."""
        heap = self._heap
        while heap and self._due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def adapt(self, launched: int, seconds: float) -> bool:
        """After a window of `seconds` in which `launched` scrapes started: cut the rate to
        the achieved one when the plan fell behind by more than half a period and fewer
        scrapes than planned started (the process cannot do more; one late wake-up that
        still started them all is no reason), else grow it back towards the budget. True
        when cut."""
        late, self._late = self._late, 0.0
        if seconds <= 0:
            return False
        achieved, planned = launched / seconds, len(self._due) / self.period
        if late > BEHIND * self.period and achieved < SHORT * planned:
            self.rate = max(MIN_RATE, achieved)
            return True
        self.rate = min(self.budget, self.rate * 1.1)
        return False

    def _push(self, address: str, due: float) -> None:
        self._due[address] = due
        heapq.heappush(self._heap, (due, address))
