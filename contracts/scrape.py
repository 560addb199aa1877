"""The scrape loop: fetch every pod's vLLM /metrics over one keep-alive connection per pod
(`contracts.httpclient`), parse it with `contracts.vllm.parse_metrics`, and write the result
(or why it failed) into the `MetricsStore`. Scrapes are spread over the interval by
`ScrapeSchedule` within a budget of scrapes per second. A page is read up to `max_bytes`
(beyond: `too_large`), and a large one is parsed in a thread, so a huge or endless page
cannot stall the loop."""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

from prometheus_client.core import Metric

from llmtraffic.contracts import series as m
from llmtraffic.contracts.families import counter_family, gauge_family, histogram_family
from llmtraffic.contracts.httpclient import (BodyTooLarge, Disconnected, IdleTimeout,
                                             UpstreamError, UpstreamPool)
from llmtraffic.contracts.options import SCRAPE_BUDGET
from llmtraffic.contracts.scrapeschedule import ScrapeSchedule
from llmtraffic.contracts.store import MetricsStore, Pod, PodMetrics, Snapshot
from llmtraffic.contracts.vllm import VllmParseError, parse_metrics

log = logging.getLogger(__name__)

#: Outcomes counted per scrape (the `outcome` label of llmtraffic_exporter_scrapes).
OUTCOMES = ("ok", "timeout", "connect_error", "http_error", "parse_error", "too_large")
#: Largest page read by default (a real vLLM page is 10-300 KB, LoRA adapters included).
MAX_PAGE_BYTES = 4 << 20
#: Pages at least this large are parsed in a thread.
OFF_LOOP_PAGE_BYTES = 256 << 10
#: The scheduler wakes at most this often (due scrapes are started in batches).
TICK_S = 0.005
#: Seconds between two reviews of the plan (rate adapted, stale pods counted).
WINDOW_S = 1.0
#: A pod's metrics count as stale after this many planned periods without a good scrape
#: (or the store's own stale_after, when longer): a long plan must not leave pods stale.
STALE_PERIODS = 2.0
#: Scrapes in flight at most (more wait in the plan): this many, or half a timeout's worth
#: at the planned rate when more. A process too slow to read the answers it asked for then
#: falls behind its plan (and cuts its rate) instead of timing its scrapes out in its queue.
MIN_IN_FLIGHT = 128
#: Seconds an idle connection to a pod is kept (the proxy's are kept 4 s; at 5,000 pods a
#: period is 2 s or more, and every scrape should find its connection open). A pod that
#: closes it as it is reused costs one retry on a new connection.
KEEPALIVE_S = 120.0
#: The request's headers after its Host: the text format, never protobuf; never gzip,
#: which would cost both sides CPU on every scrape.
_HEADERS = (b"Accept: text/plain;version=0.0.4;q=1,*/*;q=0.1\r\n"
            b"Accept-Encoding: identity\r\n"
            b"User-Agent: llmtraffic-scraper\r\n\r\n")


@dataclass
class ScrapeCounts:
    """Scrape outcomes per pod and the scrape-duration histogram (llmtraffic_exporter_scrapes*),
    counted by every process that scrapes."""

    scrapes: dict[tuple[str, str], int] = field(default_factory=dict)  # (pod, outcome)
    scrape_durations: list[float] = field(default_factory=lambda: [0.0] * (
        len(m.SCRAPE_DURATION.buckets) + 1))
    scrape_seconds_sum: float = 0.0
    stale_pods: int = 0  # pods whose metrics are stale, as of the last review
    scrape_period: float = 0.0  # planned seconds between two scrapes of one pod

    def scrape(self, pod: str, outcome: str, seconds: float) -> None:
        k = (pod, outcome)
        self.scrapes[k] = self.scrapes.get(k, 0) + 1
        self.scrape_durations[bisect_left(m.SCRAPE_DURATION.buckets, seconds)] += 1
        self.scrape_seconds_sum += seconds


class ScrapeShare(Protocol):
    """Scrapes shared with other processes (the proxy's workers, balancer/scrapeshare.py):
    each process scrapes the pods that are `mine` and `publish`es every outcome; the
    others' outcomes reach this process's store once `start`ed."""

    def mine(self, address: str) -> bool: ...

    def publish(self, address: str, metrics: PodMetrics | None, reason: str,
                now: float) -> None: ...

    async def start(self, store: MetricsStore) -> None: ...

    async def close(self) -> None: ...


def scrape_families(s: ScrapeCounts) -> Iterator[Metric]:
    yield counter_family(m.SCRAPES, list(s.scrapes.items()))
    if s.scrape_period:
        yield gauge_family(m.SCRAPE_STALE_PODS, [((), s.stale_pods)])
        yield gauge_family(m.SCRAPE_PERIOD, [((), s.scrape_period)])
    if s.scrapes:
        yield histogram_family(m.SCRAPE_DURATION, {(): s.scrape_durations},
                               {(): s.scrape_seconds_sum}, ())


def stale_pods(snapshot: Snapshot) -> int:
    """Pods without fresh metrics: never scraped, failing, or older than stale-after."""
    return sum(1 for p in snapshot.pods if not p.fresh)


class Scraper:
    """Scrapes every pod in `store.pods()` every `interval` seconds, or every
    pods/`budget` seconds when there are more pods than `budget` x `interval`.

    `run` spreads the scrapes over that period (`ScrapeSchedule`); `scrape_once` scrapes
    every pod at once. A pod whose previous scrape is still running (at most `timeout`
    seconds) is skipped, so scrapes of one pod never overlap. A good scrape calls
    `store.update`, a failed one `store.mark_error` with reason `timeout`, `connect_error`,
    `http_<status>`, `parse_error` or `too_large`. A pod going down or coming back is logged once.

    The store's `stale_after` is kept at least STALE_PERIODS planned periods. With a `share`
    (set before `run`), `run` scrapes only the pods the share says are this process's and
    hands every outcome to it; the other processes' outcomes come in through it."""

    def __init__(self, store: MetricsStore, *, interval: float = 0.25, timeout: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, stats: ScrapeCounts | None = None,
                 path: str = "/metrics", max_bytes: int = MAX_PAGE_BYTES,
                 budget: float = SCRAPE_BUDGET) -> None:
        if not interval > 0:
            raise ValueError(f"Scraper interval must be > 0 seconds, got {interval!r}")
        if not timeout > 0:
            raise ValueError(f"Scraper timeout must be > 0 seconds, got {timeout!r}")
        if not path.startswith("/"):
            raise ValueError(f"Scraper path must start with '/', got {path!r}")
        self.store = store
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self.stats = stats
        self.path = path
        self.max_bytes = max_bytes
        self.schedule = ScrapeSchedule(interval, budget)
        self._generation = -1  # the store's membership the schedule follows
        self._slow_said = False
        self._pool: UpstreamPool | None = None
        self._busy: dict[str, asyncio.Task[None]] = {}  # address -> its running scrape
        self._up: dict[str, bool] = {}  # address -> state last logged
        self._warned_bad_lines: set[str] = set()
        self._stale_after = store.stale_after  # the store's own, before following the plan
        self.share: ScrapeShare | None = None

    # --- public ---------------------------------------------------------------------------
    async def scrape_once(self) -> None:
        """Scrape every pod not already being scraped, concurrently; return when done."""
        tasks = self._launch()
        if tasks:
            await asyncio.gather(*tasks)

    async def run(self) -> None:
        """Scrape each pod as `schedule` plans until cancelled (without waiting for slow
        pods); every `WINDOW_S` the plan is reviewed (`review`)."""
        if self.share is not None:
            await self.share.start(self.store)
        window_at, launched = self.clock(), 0
        while True:
            now = self.clock()
            launched += len(self.launch_due(now))
            if now - window_at >= WINDOW_S:
                self.review(launched, now - window_at, now)
                window_at, launched = now, 0
            nxt = self.schedule.next_at()
            wait = WINDOW_S if nxt is None else min(WINDOW_S, nxt - self.clock())
            await asyncio.sleep(max(TICK_S, wait))

    def launch_due(self, now: float) -> list[asyncio.Task[None]]:
        """Start the scrapes `schedule` has due at `now` (following membership first)."""
        store = self.store
        if store.generation != self._generation:
            self._generation = store.generation
            self._forget_left()
            share = self.share
            self.schedule.set_pods([p.address for p in store.pods()
                                    if share is None or share.mine(p.address)], now)
            self._follow_period()
        room = max(MIN_IN_FLIGHT, int(self.schedule.rate * self.timeout / 2)) - len(self._busy)
        tasks = []
        for address in self.schedule.due(now, max(room, 0)):
            pod = store.pod(address)
            if pod is not None:
                task = self._start(pod)
                if task is not None:
                    tasks.append(task)
        return tasks

    def review(self, launched: int, seconds: float, now: float) -> None:
        """Adapt the rate to what was achieved, and count the stale pods."""
        asked = self.schedule.period
        if self.schedule.adapt(launched, seconds) and not self._slow_said:
            self._slow_said = True
            log.warning("scraping fell behind: %d scrapes started in %.1f s where %d pods "
                        "every %.2f s were planned; each pod is now scraped every %.2f s",
                        launched, seconds, len(self.schedule), asked, self.schedule.period)
        self._follow_period()
        if self.stats is not None:
            self.stats.stale_pods = stale_pods(self.store.snapshot(now))
            self.stats.scrape_period = self.schedule.period

    def _follow_period(self) -> None:
        self.store.stale_after = max(self._stale_after, STALE_PERIODS * self.schedule.period)

    async def close(self) -> None:
        """Cancel scrapes in flight and close the connections."""
        tasks = list(self._busy.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self.share is not None:
            await self.share.close()

    async def __aenter__(self) -> Scraper:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- internals ------------------------------------------------------------------------
    def _client(self) -> UpstreamPool:
        if self._pool is None:  # one connection kept per pod: its scrapes never overlap
            self._pool = UpstreamPool(self.timeout, self.timeout, max_idle_per_pod=1,
                                      keepalive=KEEPALIVE_S)
        return self._pool

    def _url(self, address: str) -> str:
        return f"http://{address}{self.path}"

    def _forget_left(self) -> None:
        """Forget what was logged about pods that left."""
        if len(self._up) > len(self.store.pods()):
            store = self.store
            for address in [a for a in self._up if store.pod(a) is None]:
                del self._up[address]
                self._warned_bad_lines.discard(address)

    def _launch(self) -> list[asyncio.Task[None]]:
        self._forget_left()
        tasks = [self._start(pod) for pod in self.store.pods()]
        return [t for t in tasks if t is not None]

    def _start(self, pod: Pod) -> asyncio.Task[None] | None:
        """Start scraping `pod`, unless its previous scrape is still running."""
        if pod.address in self._busy:
            return None
        task = asyncio.create_task(self._scrape(pod), name=f"scrape {pod.address}")
        self._busy[pod.address] = task
        task.add_done_callback(lambda t, a=pod.address: self._release(a, t))
        return task

    def _release(self, address: str, task: asyncio.Task[None]) -> None:
        if self._busy.get(address) is task:
            del self._busy[address]

    async def _fetch(self, address: str) -> tuple[int, bytes]:
        """GET the pod's page (no redirect followed): its status and body, BodyTooLarge
        over `max_bytes`."""
        head = f"GET {self.path} HTTP/1.1\r\nHost: {address}\r\n".encode() + _HEADERS
        pool = self._client()
        try:
            resp = await pool.request(address, head)
        except Disconnected as e:
            if not e.reused:
                raise
            # the pod closed an idle keep-alive connection as we reused it: retry once on a
            # new connection, as Go's http client does for idempotent requests
            resp = await pool.request(address, head)
        try:
            return resp.status, await resp.read_all(self.max_bytes)
        finally:
            resp.close()

    async def _scrape(self, pod: Pod) -> None:
        started = time.perf_counter()
        metrics = None
        try:
            async with asyncio.timeout(self.timeout):
                status, body = await self._fetch(pod.address)
            if 200 <= status < 300:
                metrics = parse_metrics(body) if len(body) < OFF_LOOP_PAGE_BYTES else \
                    await asyncio.to_thread(parse_metrics, body)
                outcome, reason, detail = "ok", "", ""
            else:
                outcome, reason = "http_error", f"http_{status}"
                detail = body[:200].decode("utf-8", "replace").strip()
        except (TimeoutError, IdleTimeout):
            outcome, reason, detail = "timeout", "timeout", f"no answer within {self.timeout} s"
        except BodyTooLarge as exc:
            outcome, reason, detail = "too_large", "too_large", \
                f"the page is larger than the limit of {self.max_bytes} bytes ({exc})"
        except VllmParseError as exc:
            outcome, reason, detail = "parse_error", "parse_error", str(exc)
        except (UpstreamError, OSError) as exc:
            outcome, reason, detail = "connect_error", "connect_error", repr(exc)
        except Exception as exc:  # noqa: BLE001 - a scrape must never kill the loop
            log.exception("unexpected error scraping %s", self._url(pod.address))
            outcome, reason, detail = "connect_error", "connect_error", repr(exc)
        now = self.clock()
        if self.share is not None:
            self.share.publish(pod.address, metrics, reason, now)
        if metrics is not None:
            self.store.update(pod.address, metrics, now)
            if metrics.bad_lines and pod.address not in self._warned_bad_lines:
                self._warned_bad_lines.add(pod.address)
                log.warning("pod %s (%s): skipped %d malformed line(s) of vLLM families in %s",
                            pod.name, pod.address, metrics.bad_lines,
                            self._url(pod.address))
        elif not self.store.mark_error(pod.address, reason, now):
            if self.stats is not None:
                self.stats.scrape(pod.name, outcome, time.perf_counter() - started)
            log.debug("pod %s (%s): one scrape timed out after a good one; kept in rotation",
                      pod.name, pod.address)
            return
        if self.stats is not None:
            self.stats.scrape(pod.name, outcome, time.perf_counter() - started)
        self._note_state(pod, metrics is not None, reason, detail)

    def _note_state(self, pod: Pod, up: bool, reason: str, detail: str) -> None:
        before = self._up.get(pod.address)
        if up == before:
            return
        self._up[pod.address] = up
        url = self._url(pod.address)
        if up:
            if before is not None:
                log.info("pod %s (%s) is up again: %s answers", pod.name, pod.address, url)
        else:
            log.warning("pod %s (%s) is down: scraping %s failed with %s (%s); the balancer "
                        "treats its metrics as stale until it answers again",
                        pod.name, pod.address, url, reason, detail)
