"""The scrape loop: fetch every pod's vLLM /metrics concurrently over one keep-alive
aiohttp session, parse it with `contracts.vllm.parse_metrics`, and write the result (or why
it failed) into the `MetricsStore`. A page is read up to `max_bytes` (beyond: `too_large`),
and a large one is parsed in a thread, so a huge or endless page cannot stall the loop."""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Callable, Iterator

import aiohttp
from prometheus_client.core import Metric

from llmtraffic.contracts import series as m
from llmtraffic.contracts.families import counter_family, histogram_family
from llmtraffic.contracts.store import MetricsStore, Pod
from llmtraffic.contracts.vllm import VllmParseError, parse_metrics

log = logging.getLogger(__name__)

#: Outcomes counted per scrape (the `outcome` label of llmtraffic_exporter_scrapes).
OUTCOMES = ("ok", "timeout", "connect_error", "http_error", "parse_error", "too_large")
#: Largest page read by default (a real vLLM page is 10-300 KB, LoRA adapters included).
MAX_PAGE_BYTES = 4 << 20
#: Pages at least this large are parsed in a thread.
OFF_LOOP_PAGE_BYTES = 256 << 10


class PageTooLarge(Exception):
    """A page longer than the scraper's `max_bytes`."""
_HEADERS = {
    "Accept": "text/plain;version=0.0.4;q=1,*/*;q=0.1",  # the text format, never protobuf
    "Accept-Encoding": "identity",  # gzip would cost both sides CPU on every scrape
    "User-Agent": "llmtraffic-scraper",
}


@dataclass
class ScrapeCounts:
    """Scrape outcomes per pod and the scrape-duration histogram (llmtraffic_exporter_scrapes*),
    counted by every process that scrapes."""

    scrapes: dict[tuple[str, str], int] = field(default_factory=dict)  # (pod, outcome)
    scrape_durations: list[float] = field(default_factory=lambda: [0.0] * (
        len(m.SCRAPE_DURATION.buckets) + 1))
    scrape_seconds_sum: float = 0.0

    def scrape(self, pod: str, outcome: str, seconds: float) -> None:
        k = (pod, outcome)
        self.scrapes[k] = self.scrapes.get(k, 0) + 1
        self.scrape_durations[bisect_left(m.SCRAPE_DURATION.buckets, seconds)] += 1
        self.scrape_seconds_sum += seconds


def scrape_families(s: ScrapeCounts) -> Iterator[Metric]:
    yield counter_family(m.SCRAPES, list(s.scrapes.items()))
    if s.scrapes:
        yield histogram_family(m.SCRAPE_DURATION, {(): s.scrape_durations},
                               {(): s.scrape_seconds_sum}, ())


class Scraper:
    """Scrapes every pod in `store.pods()` every `interval` seconds.

    Pods are scraped concurrently; a pod whose previous scrape is still running (at most
    `timeout` seconds) is skipped, so scrapes of one pod never overlap. A good scrape calls
    `store.update`, a failed one `store.mark_error` with reason `timeout`, `connect_error`,
    `http_<status>`, `parse_error` or `too_large`. A pod going down or coming back is logged once."""

    def __init__(self, store: MetricsStore, *, interval: float = 0.25, timeout: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, stats: ScrapeCounts | None = None,
                 path: str = "/metrics", max_bytes: int = MAX_PAGE_BYTES) -> None:
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
        self._session: aiohttp.ClientSession | None = None
        self._busy: dict[str, asyncio.Task[None]] = {}  # address -> its running scrape
        self._up: dict[str, bool] = {}  # address -> state last logged
        self._warned_bad_lines: set[str] = set()

    # --- public ---------------------------------------------------------------------------
    async def scrape_once(self) -> None:
        """Scrape every pod not already being scraped, concurrently; return when done."""
        tasks = self._launch()
        if tasks:
            await asyncio.gather(*tasks)

    async def run(self) -> None:
        """Scrape every `interval` seconds until cancelled (without waiting for slow pods)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            self._launch()
            next_at += self.interval
            now = loop.time()
            if next_at <= now:  # fell behind (a busy event loop): skip the missed ticks
                next_at = now + self.interval
            await asyncio.sleep(next_at - now)

    async def close(self) -> None:
        """Cancel scrapes in flight and close the HTTP session."""
        tasks = list(self._busy.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Scraper:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- internals ------------------------------------------------------------------------
    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=1),
                headers=_HEADERS,
                timeout=aiohttp.ClientTimeout(total=None),  # our own per-pod timeout applies
            )
        return self._session

    def _launch(self) -> list[asyncio.Task[None]]:
        pods = self.store.pods()
        if len(self._up) > len(pods):  # forget pods that left
            present = {p.address for p in pods}
            for address in [a for a in self._up if a not in present]:
                del self._up[address]
                self._warned_bad_lines.discard(address)
        tasks = []
        for pod in pods:
            if pod.address in self._busy:
                continue
            task = asyncio.create_task(self._scrape(pod), name=f"scrape {pod.address}")
            self._busy[pod.address] = task
            task.add_done_callback(lambda t, a=pod.address: self._release(a, t))
            tasks.append(task)
        return tasks

    def _release(self, address: str, task: asyncio.Task[None]) -> None:
        if self._busy.get(address) is task:
            del self._busy[address]

    async def _fetch(self, url: str) -> tuple[int, bytes]:
        try:
            return await self._get(url)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionResetError):
            # the pod closed an idle keep-alive connection as we reused it: retry once on a
            # new connection, as Go's http client does for idempotent requests
            return await self._get(url)

    async def _get(self, url: str) -> tuple[int, bytes]:
        async with self._client().get(url, allow_redirects=False) as resp:
            if (resp.content_length or 0) > self.max_bytes:
                raise PageTooLarge(f"it announces {resp.content_length} bytes")
            body = bytearray()
            async for chunk in resp.content.iter_any():
                body += chunk
                if len(body) > self.max_bytes:
                    raise PageTooLarge(f"more than {self.max_bytes} bytes came")
            return resp.status, bytes(body)

    async def _scrape(self, pod: Pod) -> None:
        started = time.perf_counter()
        url = f"http://{pod.address}{self.path}"
        metrics = None
        try:
            async with asyncio.timeout(self.timeout):
                status, body = await self._fetch(url)
            if 200 <= status < 300:
                metrics = parse_metrics(body) if len(body) < OFF_LOOP_PAGE_BYTES else \
                    await asyncio.to_thread(parse_metrics, body)
                outcome, reason, detail = "ok", "", ""
            else:
                outcome, reason = "http_error", f"http_{status}"
                detail = body[:200].decode("utf-8", "replace").strip()
        except TimeoutError:
            outcome, reason, detail = "timeout", "timeout", f"no answer within {self.timeout} s"
        except PageTooLarge as exc:
            outcome, reason, detail = "too_large", "too_large", \
                f"the page is larger than the limit of {self.max_bytes} bytes ({exc})"
        except VllmParseError as exc:
            outcome, reason, detail = "parse_error", "parse_error", str(exc)
        except (aiohttp.ClientError, OSError) as exc:
            outcome, reason, detail = "connect_error", "connect_error", repr(exc)
        except Exception as exc:  # noqa: BLE001 - a scrape must never kill the loop
            log.exception("unexpected error scraping %s", url)
            outcome, reason, detail = "connect_error", "connect_error", repr(exc)
        now = self.clock()
        if metrics is not None:
            self.store.update(pod.address, metrics, now)
            if metrics.bad_lines and pod.address not in self._warned_bad_lines:
                self._warned_bad_lines.add(pod.address)
                log.warning("pod %s (%s): skipped %d malformed line(s) of vLLM families in %s",
                            pod.name, pod.address, metrics.bad_lines, url)
        elif not self.store.mark_error(pod.address, reason, now):
            if self.stats is not None:
                self.stats.scrape(pod.name, outcome, time.perf_counter() - started)
            log.debug("pod %s (%s): one scrape timed out after a good one; kept in rotation",
                      pod.name, pod.address)
            return
        if self.stats is not None:
            self.stats.scrape(pod.name, outcome, time.perf_counter() - started)
        self._note_state(pod, url, metrics is not None, reason, detail)

    def _note_state(self, pod: Pod, url: str, up: bool, reason: str, detail: str) -> None:
        before = self._up.get(pod.address)
        if up == before:
            return
        self._up[pod.address] = up
        if up:
            if before is not None:
                log.info("pod %s (%s) is up again: %s answers", pod.name, pod.address, url)
        else:
            log.warning("pod %s (%s) is down: scraping %s failed with %s (%s); the balancer "
                        "treats its metrics as stale until it answers again",
                        pod.name, pod.address, url, reason, detail)
