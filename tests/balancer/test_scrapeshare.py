"""The workers' scrape share in one process: the pods are split between the workers (each
pod to exactly one), and an outcome published by one worker lands in the other's store (good
scrape or failure, with its time); an oversized batch ends the connection, nothing else."""

from __future__ import annotations

import asyncio

from llmtraffic.balancer.scrapeshare import MAX_FRAME, WorkerScrapeShare, share_path
from llmtraffic.balancer.workers import WorkerSeat
from llmtraffic.contracts.store import MetricsStore, Pod, PodMetrics

ADDRESSES = [f"10.0.0.{i}:8000" for i in range(40)]


def seats(tmp_path, count: int = 2) -> list[WorkerSeat]:
    return [WorkerSeat(i, count, "127.0.0.1", 0, str(tmp_path)) for i in range(count)]


def store() -> MetricsStore:
    s = MetricsStore()
    s.set_pods([Pod(f"p{i}", a) for i, a in enumerate(ADDRESSES)])
    return s


def test_each_pod_is_one_workers(tmp_path):
    shares = [WorkerScrapeShare(seat) for seat in seats(tmp_path, 3)]
    owners = [[s.seat.index for s in shares if s.mine(a)] for a in ADDRESSES]
    assert all(len(o) == 1 for o in owners)
    assert {o[0] for o in owners} == {0, 1, 2}  # 40 pods: every worker has some


async def until(check, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    assert check()


async def test_outcomes_published_by_one_worker_land_in_the_others_store(tmp_path):
    a, b = (WorkerScrapeShare(seat) for seat in seats(tmp_path))
    store_a, store_b = store(), store()
    await a.start(store_a)
    await b.start(store_b)
    try:
        await until(lambda: a._peers and b._peers)
        a.publish(ADDRESSES[0], PodMetrics(running=3.0, models=("m",)), "", 100.0)
        a.publish(ADDRESSES[1], None, "connect_error", 100.5)
        await until(lambda: store_b.snapshot(100.6).pods[1].last_error is not None)
        got = store_b.snapshot(100.6).pods
        assert got[0].metrics == PodMetrics(running=3.0, models=("m",))
        assert got[0].scraped_at == 100.0 and got[0].fresh
        assert got[1].last_error == "connect_error" and not got[1].fresh
        assert store_a.snapshot(100.6).pods[0].metrics is None  # sent, not kept, by a
        # in-flight accounting stays each worker's own
        store_b.acquire(ADDRESSES[0])
        assert store_a.inflight(ADDRESSES[0]) == 0 and store_b.inflight(ADDRESSES[0]) == 1
    finally:
        await a.close()
        await b.close()


async def test_an_oversized_batch_ends_the_connection(tmp_path):
    share = WorkerScrapeShare(seats(tmp_path)[0])
    await share.start(store())
    try:
        reader, writer = await asyncio.open_unix_connection(share_path(share.seat, 0))
        writer.write((MAX_FRAME + 1).to_bytes(4, "big"))
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the worker
        writer.close()
    finally:
        await share.close()
