"""A worker's /metrics when the proxy runs several workers: it serves its own collected
families to its peers on a Unix socket, and answers a scrape with every worker's families
merged (`metricsmerge`), so whichever worker Prometheus reaches, each fact is counted once."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from llmtraffic.balancer.metricsmerge import MergedCollector, from_wire, merge, to_wire
from llmtraffic.balancer.workers import WorkerSeat

#: Seconds a peer has to hand over its series before the scrape fails (503).
PEER_TIMEOUT = 2.0


class PeerUnavailable(Exception):
    """A peer worker did not hand over its series: the scrape must fail, not undercount."""


class PeerMetrics:
    """`start()` serves this worker's families on its socket; `exposition()` is the merged
    text of all workers; `stop()` ends both sides."""

    def __init__(self, seat: WorkerSeat, registry: CollectorRegistry) -> None:
        self.seat = seat
        self.registry = registry
        self._runner: web.AppRunner | None = None
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/families", self._families)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        path = self.seat.socket_path(self.seat.index)
        if os.path.exists(path):
            os.unlink(path)
        await web.UnixSite(self._runner, path).start()

    async def stop(self) -> None:
        for s in self._sessions.values():
            await s.close()
        self._sessions.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _families(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(to_wire(self.registry.collect())),
                            content_type="application/json")

    async def exposition(self) -> bytes:
        """Every worker's series as one Prometheus text page; PeerUnavailable when a peer
        does not answer within PEER_TIMEOUT."""
        own = list(self.registry.collect())
        peers = await asyncio.gather(*(self._fetch(p) for p in self.seat.peers()))
        merged = CollectorRegistry(auto_describe=False)
        merged.register(MergedCollector(merge([own, *peers])))
        return generate_latest(merged)

    async def _fetch(self, path: str) -> list:
        session = self._sessions.get(path)
        if session is None:
            session = self._sessions[path] = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=path),
                timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT))
        try:
            async with session.get("http://worker/families") as r:
                if r.status != 200:
                    raise PeerUnavailable(f"worker socket {os.path.basename(path)} answered "
                                          f"{r.status}")
                return from_wire(orjson.loads(await r.read()))
        except (aiohttp.ClientError, asyncio.TimeoutError, orjson.JSONDecodeError) as e:
            raise PeerUnavailable(f"worker socket {os.path.basename(path)}: "
                                  f"{type(e).__name__}: {e}") from None
