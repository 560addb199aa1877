"""Scraper against real aiohttp servers on loopback: fresh metrics land in the store;
timeouts, HTTP errors, garbage and vanished targets are marked, logged once, and recovered
from; scrapes of one pod never overlap."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from llmtraffic.contracts.scrape import OUTCOMES, Scraper
from llmtraffic.contracts.store import MetricsStore, Pod
from llmtraffic.harness.prometheus import free_port
from tests.fixtures import vllm_page


class PageServer:
    """A /metrics endpoint whose behaviour a test switches: "ok" serves a vLLM page whose
    running count is the number of requests served so far; "slow" answers after `delay`
    seconds; "500" fails; "garbage" serves text with no vLLM family."""

    def __init__(self, mode: str = "ok", delay: float = 5.0, full_page: bool = False) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.mode = mode
        self.delay = delay
        self.full_page = vllm_page(seed=1).decode() if full_page else None
        self.hits = 0
        self.sent = 0  # bytes of the last huge or endless page written
        self.active = 0
        self.max_active = 0
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()

    async def start(self) -> PageServer:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self._release = asyncio.Event()
        return self

    async def stop(self) -> None:
        self._release.set()  # let slow handlers finish
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.mode == "slow":
                try:
                    await asyncio.wait_for(self._release.wait(), self.delay)
                except TimeoutError:
                    pass
            if self.mode == "500":
                return web.Response(status=500, text="engine dead")
            if self.mode == "garbage":
                return web.Response(text="<html>hello</html>\n}}{{ 12\n")
            if self.mode in ("huge", "endless"):
                return await self._endless(request)
            page = self.full_page or (
                f'vllm:num_requests_running{{engine="0",model_name="m"}} {self.hits}\n'
                f'vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} 0.5\n')
            return web.Response(text=page)
        finally:
            self.active -= 1


    async def _endless(self, request: web.Request) -> web.StreamResponse:
        """A page of comment lines: 50 MB ("huge", announced), or without end."""
        size = 50 << 20 if self.mode == "huge" else None
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        if size is not None:
            resp.content_length = size
        await resp.prepare(request)
        line = b"# " + b"x" * 1021 + b"\n"
        sent = 0
        while size is None or sent < size:
            try:
                await resp.write(line)
            except ConnectionError:
                break
            sent += len(line)
            self.sent = sent
        return resp


class Outcomes:
    """A stats sink with the duck-typed `scrape(pod, outcome, seconds)` method."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, float]] = []

    def scrape(self, pod: str, outcome: str, seconds: float) -> None:
        self.seen.append((pod, outcome, seconds))

    def of(self, pod: str) -> list[str]:
        return [o for p, o, _ in self.seen if p == pod]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def servers():
    started: list[PageServer] = []

    async def make(mode: str = "ok", **kw: object) -> PageServer:
        server = await PageServer(mode, **kw).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


def _store(*servers: PageServer) -> MetricsStore:
    store = MetricsStore(stale_after=2.0)
    store.set_pods(Pod(f"pod-{i}", s.address) for i, s in enumerate(servers))
    return store


async def test_scrape_once_puts_fresh_metrics_in_the_store(servers) -> None:
    a, b = await servers(), await servers(full_page=True)
    store, clock, stats = _store(a, b), FakeClock(), Outcomes()
    async with Scraper(store, clock=clock, stats=stats) as scraper:
        await scraper.scrape_once()
        snap = store.snapshot(clock.now).by_address()
        assert snap[a.address].fresh and snap[a.address].metrics.running == 1
        assert snap[a.address].scraped_at == 100.0 and snap[a.address].last_error is None
        assert snap[b.address].fresh and snap[b.address].metrics.ttft is not None
        assert snap[b.address].metrics.models == ("meta-llama/Llama-2-7b-hf",)
        clock.now = 101.0
        await scraper.scrape_once()
        snap = store.snapshot(clock.now).by_address()
        assert snap[a.address].metrics.running == 2 and snap[a.address].scraped_at == 101.0
    assert stats.of("pod-0") == ["ok", "ok"] and stats.of("pod-1") == ["ok", "ok"]
    assert all(seconds > 0 for _, _, seconds in stats.seen)


async def test_failing_targets_are_marked_and_the_others_keep_updating(servers) -> None:
    ok, slow, err, garbage, gone = [await servers() for _ in range(5)]
    store, clock, stats = _store(ok, slow, err, garbage, gone), FakeClock(), Outcomes()
    async with Scraper(store, clock=clock, stats=stats, timeout=0.3) as scraper:
        await scraper.scrape_once()  # everyone answers once
        assert all(p.fresh for p in store.snapshot(clock.now).pods)
        slow.mode, err.mode, garbage.mode = "slow", "500", "garbage"
        await gone.stop()
        for _ in range(2):
            clock.now += 1.0
            await scraper.scrape_once()
        snap = store.snapshot(clock.now).by_address()
        assert snap[ok.address].fresh and snap[ok.address].metrics.running == 3
        expected = {slow.address: "timeout", err.address: "http_500",
                    garbage.address: "parse_error", gone.address: "connect_error"}
        for address, reason in expected.items():
            state = snap[address]
            assert (state.fresh, state.last_error) == (False, reason), address
            assert state.metrics is not None  # the last good metrics are kept, but not fresh
        assert store.scrape_errors(err.address) == 2
    assert stats.of("pod-1")[1:] == ["timeout", "timeout"]
    assert stats.of("pod-2")[1:] == ["http_error", "http_error"]
    assert stats.of("pod-3")[1:] == ["parse_error", "parse_error"]
    assert stats.of("pod-4")[1:] == ["connect_error", "connect_error"]
    assert {o for _, o, _ in stats.seen} <= set(OUTCOMES)


async def test_pod_recovers_and_state_changes_are_logged_once(servers, caplog) -> None:
    target = await servers()
    store, clock = _store(target), FakeClock()
    caplog.set_level(logging.INFO, logger="llmtraffic.contracts.scrape")
    async with Scraper(store, clock=clock, timeout=0.5) as scraper:
        await scraper.scrape_once()
        await target.stop()
        for _ in range(3):
            await scraper.scrape_once()
        assert store.snapshot(clock.now).pods[0].last_error == "connect_error"
        await target.start()  # back on the same port
        for _ in range(3):
            await scraper.scrape_once()
        state = store.snapshot(clock.now).pods[0]
        assert state.fresh and state.last_error is None and state.metrics.running == 4
    messages = [r.getMessage() for r in caplog.records if r.name == "llmtraffic.contracts.scrape"]
    down = [m for m in messages if "is down" in m]
    up = [m for m in messages if "up again" in m]
    assert len(down) == 1 and "connect_error" in down[0] and "pod-0" in down[0]
    assert len(up) == 1


async def test_a_pod_that_never_answered_is_logged_down_once(caplog) -> None:
    store = MetricsStore()
    store.set_pods([Pod("ghost", f"127.0.0.1:{free_port()}")])
    caplog.set_level(logging.INFO, logger="llmtraffic.contracts.scrape")
    async with Scraper(store) as scraper:
        for _ in range(3):
            await scraper.scrape_once()
    messages = [r.getMessage() for r in caplog.records if r.name == "llmtraffic.contracts.scrape"]
    assert len(messages) == 1 and "ghost" in messages[0] and "is down" in messages[0]


async def test_run_honours_the_interval_and_never_overlaps_a_pod(servers) -> None:
    fast, slow = await servers(), await servers("slow", delay=0.25)
    store = _store(fast, slow)
    interval = 0.05
    loop = asyncio.get_running_loop()
    async with Scraper(store, interval=interval, timeout=1.0) as scraper:
        started = loop.time()
        task = asyncio.create_task(scraper.run())
        await asyncio.sleep(0.6)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        elapsed = loop.time() - started
    # one scrape per tick at most (a slow machine scrapes less, never more)
    assert 2 <= fast.hits <= elapsed / interval + 2
    # the slow pod is never scraped again while its scrape is still running
    assert slow.max_active == 1 and fast.max_active == 1
    assert slow.hits < fast.hits


async def test_membership_changes_between_scrapes(servers) -> None:
    a, b = await servers(), await servers()
    store = _store(a)
    async with Scraper(store) as scraper:
        await scraper.scrape_once()
        store.set_pods([Pod("pod-b", b.address)])
        await scraper.scrape_once()
        assert [p.address for p in store.snapshot(0).pods] == [b.address]
        assert store.snapshot(0).pods[0].metrics.running == 1
    assert a.hits == 1 and b.hits == 1


async def test_close_cancels_scrapes_in_flight_and_closes_the_connections(servers) -> None:
    slow = await servers("slow", delay=30.0)
    store = _store(slow)
    scraper = Scraper(store, timeout=30.0)
    task = asyncio.create_task(scraper.scrape_once())
    while slow.hits == 0:
        await asyncio.sleep(0.01)
    pool = scraper._pool
    await scraper.close()
    await asyncio.gather(task, return_exceptions=True)
    assert task.done() and pool is not None and pool.closed and pool.in_use == 0
    assert store.snapshot(0).pods[0].last_error is None  # a cancelled scrape records nothing
    await scraper.close()  # idempotent


@pytest.mark.parametrize("kwargs", [{"interval": 0}, {"timeout": -1}, {"path": "metrics"}])
def test_bad_settings_are_refused(kwargs) -> None:
    with pytest.raises(ValueError, match="Scraper"):
        Scraper(MetricsStore(), **kwargs)


@pytest.mark.parametrize("mode", ["huge", "endless"])
async def test_a_page_over_the_size_limit_is_too_large_and_not_read_on(mode, servers) -> None:
    big, good = await servers(mode), await servers(full_page=True)
    store, clock, stats = _store(big, good), FakeClock(), Outcomes()
    async with Scraper(store, clock=clock, stats=stats, timeout=30,
                       max_bytes=1 << 20) as scraper:
        await scraper.scrape_once()
    snap = store.snapshot(clock.now).by_address()
    assert stats.of("pod-0") == ["too_large"] and snap[big.address].last_error == "too_large"
    assert stats.of("pod-1") == ["ok"] and snap[good.address].fresh
    assert big.sent < 50 << 20  # the client stopped reading


async def test_a_large_page_is_parsed_off_the_event_loop(servers, monkeypatch) -> None:
    from llmtraffic.contracts import scrape

    threaded: list[int] = []
    real = asyncio.to_thread

    async def to_thread(fn, body, *args):
        threaded.append(len(body))
        return await real(fn, body, *args)

    monkeypatch.setattr(scrape.asyncio, "to_thread", to_thread)
    small, large = await servers(full_page=True), await servers(full_page=True)
    large.full_page += "# padding " + "x" * (300 << 10) + "\n"
    store, clock = _store(small, large), FakeClock()
    async with Scraper(store, clock=clock) as scraper:
        await scraper.scrape_once()
    snap = store.snapshot(clock.now).by_address()
    assert snap[small.address].fresh and snap[large.address].fresh
    assert len(threaded) == 1 and threaded[0] > 300 << 10


async def test_scrapes_keep_one_connection_and_retry_once_when_the_pod_closed_it() -> None:
    page = b'vllm:num_requests_running{engine="0",model_name="m"} 3\n'
    heads: list[bytes] = []
    connections = [0]

    async def pod(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        connections[0] += 1
        try:
            while True:
                heads.append(await r.readuntil(b"\r\n\r\n"))
                if len(heads) == 3:  # closes the kept connection as it is reused
                    return
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(page), page))
                await w.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            w.close()

    server = await asyncio.start_server(pod, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    store, clock, stats = MetricsStore(stale_after=2.0), FakeClock(), Outcomes()
    store.set_pods([Pod("pod-0", address)])
    async with Scraper(store, clock=clock, stats=stats, path="/metrics?x=1") as scraper:
        for _ in range(3):
            await scraper.scrape_once()
    server.close()
    assert stats.of("pod-0") == ["ok", "ok", "ok"] and connections[0] == 2
    assert store.snapshot(clock.now).pods[0].metrics.running == 3
    assert len(heads) == 4 and heads[0] == heads[3]
    assert heads[0].startswith(b"GET /metrics?x=1 HTTP/1.1\r\nHost: " + address.encode())
    assert b"\r\nAccept-Encoding: identity\r\n" in heads[0]


async def test_a_redirect_is_not_followed() -> None:
    async def pod(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 302 Found\r\nLocation: http://example.invalid/\r\n"
                b"Content-Length: 5\r\n\r\nmoved")
        await w.drain()
        w.close()

    server = await asyncio.start_server(pod, "127.0.0.1", 0)
    store, clock, stats = MetricsStore(stale_after=2.0), FakeClock(), Outcomes()
    store.set_pods([Pod("pod-0", f"127.0.0.1:{server.sockets[0].getsockname()[1]}")])
    async with Scraper(store, clock=clock, stats=stats) as scraper:
        await scraper.scrape_once()
    server.close()
    assert stats.of("pod-0") == ["http_error"]
    assert store.snapshot(clock.now).pods[0].last_error == "http_302"
