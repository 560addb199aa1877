"""One scrape of each pod per period for all of the proxy's workers: worker k scrapes the
pods whose address hashes to k (`mine`) and sends every outcome, in batches, to the other
workers over Unix sockets in the workers' private run directory; each worker writes what it
receives into its own store. A pod's page is read once per period, not once per worker;
each worker's in-flight accounting stays its own."""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import zlib

from llmtraffic.balancer.workers import START_TIMEOUT, WorkerSeat
from llmtraffic.contracts.store import MetricsStore, PodMetrics

log = logging.getLogger(__name__)

#: Outcomes are sent at most this long after their scrape (batched meanwhile).
FLUSH_S = 0.005
#: Largest batch a worker takes from a peer (bytes); a larger one ends that connection.
MAX_FRAME = 64 << 20
#: Bytes queued to a peer that does not read; beyond, batches to it are dropped (counted).
MAX_QUEUED = 16 << 20
#: Seconds between two tries to reach a peer that is not listening yet.
RETRY_S = 0.05
_HEAD = 4  # a batch is sent as its length (4 bytes, big-endian) and its pickle

Outcome = tuple[str, PodMetrics | None, str, float]  # address, metrics or None, reason, when


def share_path(seat: WorkerSeat, index: int) -> str:
    """Where worker `index` takes its peers' scrape outcomes."""
    return os.path.join(seat.rundir, f"worker-{index}.scrapes.sock")


class WorkerScrapeShare:
    """`contracts.scrape.ScrapeShare` between the workers of one `serve_workers` run. The
    batches are pickles: only the workers (forked from one parent, same user) can reach the
    sockets, which live in the run directory `serve_workers` made private (mkdtemp)."""

    def __init__(self, seat: WorkerSeat) -> None:
        self.seat = seat
        self.dropped = 0  # outcomes not sent to a peer that did not keep up
        self._store: MetricsStore | None = None
        self._server: asyncio.AbstractServer | None = None
        self._peers: dict[int, asyncio.StreamWriter] = {}
        self._connecting: asyncio.Task[None] | None = None
        self._incoming: set[asyncio.StreamWriter] = set()  # peers' connections to this one
        self._pending: list[Outcome] = []
        self._flush: asyncio.TimerHandle | None = None

    def mine(self, address: str) -> bool:
        return zlib.crc32(address.encode()) % self.seat.count == self.seat.index

    def publish(self, address: str, metrics: PodMetrics | None, reason: str,
                now: float) -> None:
        if not self._peers:
            return  # none reached yet: each scraped every pod once at start
        self._pending.append((address, metrics, reason, now))
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(FLUSH_S, self._send)

    async def start(self, store: MetricsStore) -> None:
        self._store = store
        path = share_path(self.seat, self.seat.index)
        if os.path.exists(path):
            os.unlink(path)
        self._server = await asyncio.start_unix_server(self._receive, path=path)
        self._connecting = asyncio.create_task(self._connect(), name="scrape share: peers")

    async def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        for writer in [*self._peers.values(), *self._incoming]:  # their readers end
            writer.close()
        self._peers.clear()
        if self._server is not None:
            self._server.close()
            self._server = None

    # --- sending ---------------------------------------------------------------------------
    async def _connect(self) -> None:
        """Reach every peer's socket (they start at about the same time)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        waiting = [i for i in range(self.seat.count) if i != self.seat.index]
        while waiting:
            for index in list(waiting):
                try:
                    _, writer = await asyncio.open_unix_connection(share_path(self.seat, index))
                except OSError:
                    continue
                self._peers[index] = writer
                waiting.remove(index)
            if waiting and loop.time() > deadline:
                log.error("worker %d: workers %s did not take scrape outcomes within %.0f s; "
                          "they keep only what they scrape themselves", self.seat.index,
                          waiting, START_TIMEOUT)
                return
            if waiting:
                await asyncio.sleep(RETRY_S)

    def _send(self) -> None:
        self._flush = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        frame = len(data).to_bytes(_HEAD, "big") + data
        for index, writer in list(self._peers.items()):
            if writer.is_closing():  # that worker is stopping
                del self._peers[index]
                log.debug("worker %d: worker %d closed the scrape share", self.seat.index,
                          index)
            elif writer.transport.get_write_buffer_size() > MAX_QUEUED:
                self.dropped += len(batch)
            else:
                writer.write(frame)

    # --- receiving -------------------------------------------------------------------------
    async def _receive(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._incoming.add(writer)
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(_HEAD), "big")
                if size > MAX_FRAME:
                    log.error("worker %d: a peer sent a batch of %d bytes (limit %d); its "
                              "scrape outcomes are no longer taken", self.seat.index, size,
                              MAX_FRAME)
                    return
                self._apply(pickle.loads(await reader.readexactly(size)))
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the peer stopped
        finally:
            writer.close()
            self._incoming.discard(writer)

    def _apply(self, batch: list[Outcome]) -> None:
        store = self._store
        assert store is not None
        for address, metrics, reason, now in batch:
            if metrics is not None:
                store.update(address, metrics, now)
            else:
                store.mark_error(address, reason, now)
