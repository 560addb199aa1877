"""The admission queue (GIE's flow control): its ordering alone (`WaitQueue`), then requests
living it through `RequestLifecycle.admit` on a saturated pool — let in highest priority
first and FIFO within one as room frees, refused at the bound (429) and after the timeout
(503) with Retry-After, dropped when their client leaves; negative priority still shed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from llmtraffic.balancer.admission import QueueFull, WaitQueue, has_room
from llmtraffic.balancer.core import BalancerCore
from llmtraffic.balancer.discovery import StaticDiscovery
from llmtraffic.balancer.lifecycle import RequestLifecycle
from llmtraffic.balancer.options import BalancerOptions
from llmtraffic.balancer.router import ApiError
from llmtraffic.contracts.store import Pod, PodMetrics, PodState
from tests.balancer.conftest import POOL, SEED_FILES, seed_pods, wait_for

A, B = "10.9.0.1:8000", "10.9.0.2:8000"
OBJECTIVES = "".join(f"""
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {{name: {name}}}
spec: {{priority: {priority}, poolRef: {{name: {POOL}}}}}
""" for name, priority in (("low", 0), ("mid", 5), ("high", 10), ("batch", -1)))


# ---- the ordering alone ----------------------------------------------------------------------
def test_the_highest_priority_goes_first_and_fifo_within_one() -> None:
    q = WaitQueue(limit=10)
    for i, priority in enumerate((0, 10, 5, 10, 0)):
        q.push("p", priority, float(i))
    assert q.counts() == {("p", 0): 2, ("p", 10): 2, ("p", 5): 1}
    order = [q.pop("p") for _ in range(5)]
    assert [(w.priority, w.seq) for w in order] == [(10, 1), (10, 3), (5, 2), (0, 0), (0, 4)]
    assert q.pop("p") is None and len(q) == 0


def test_pools_queue_apart_and_a_removed_waiter_is_skipped() -> None:
    q = WaitQueue(limit=10)
    a, _ = q.push("a", 1)
    b, _ = q.push("b", 9)
    a2, _ = q.push("a", 1)
    q.remove(a)
    assert q.waiting("a") == 1 and q.pools() == ["a", "b"]
    assert q.pop("a") is a2 and q.pop("a") is None
    assert q.pop("b") is b


def test_a_full_queue_refuses_or_displaces_a_lower_priority() -> None:
    q = WaitQueue(limit=2)
    q.push("p", 5)
    older, _ = q.push("p", 0)
    with pytest.raises(QueueFull):
        q.push("p", 0)  # nobody of a lower priority to give way
    assert len(q) == 2
    w, displaced = q.push("p", 7)
    assert displaced is older and older.gone  # the lowest priority's newest waiter
    assert [q.pop("p").priority for _ in range(2)] == [7, 5]


def state(waiting: float | None, kv: float = 0.0, inflight: int = 0) -> PodState:
    fresh = waiting is not None
    return PodState(Pod("p", "10.0.0.1:8000"), PodMetrics(waiting=waiting or 0.0,
                                                          kv_usage=kv) if fresh else None,
                    1.0 if fresh else None, None, inflight, 0, fresh)


def test_room_is_gies_saturation_rule_and_stale_pods_are_judged_by_in_flight() -> None:
    assert has_room([state(5, 0.8)], 5, 0.8)
    assert not has_room([state(6, 0.1), state(0, 0.9)], 5, 0.8)
    assert has_room([state(6, 0.1), state(None, inflight=5)], 5, 0.8)
    assert not has_room([state(None, inflight=6)], 5, 0.8)
    assert not has_room([], 5, 0.8)


# ---- requests living it -----------------------------------------------------------------------
def core(tmp_path: Path, **options) -> BalancerCore:
    path = tmp_path / "objectives.yaml"
    path.write_text(OBJECTIVES)
    c = BalancerCore(StaticDiscovery(SEED_FILES + [str(path)], pods=seed_pods([A, B])),
                     BalancerOptions(**{"seed": 1, "scrape_interval": 3600, "max_queued": 1000,
                                        **options}))
    c.log = lambda rec: None  # type: ignore[method-assign]
    return c


def report(c: BalancerCore, waiting: float, kv: float) -> None:
    for a in (A, B):
        c.store.update(a, PodMetrics(waiting=waiting, kv_usage=kv), time.monotonic())


def saturate(c: BalancerCore) -> None:
    report(c, 50, 0.95)


def free(c: BalancerCore) -> None:
    report(c, 0, 0.1)
    assert c.admission is not None
    c.admission.poke()


BODY = {"model": "tweet-summary", "prompt": "hi"}


async def request(c: BalancerCore, objective: str | None, prompt: str = "hi",
                  let_in: list | None = None) -> RequestLifecycle:
    """One request through `admit`; once let in it takes its pod (and stays there)."""
    life = RequestLifecycle(c)
    try:
        d = await life.admit("test.com", {**BODY, "prompt": prompt}, False, objective)
    except ApiError as e:
        life.refuse(e)
        raise
    if let_in is not None:
        let_in.append(prompt)
    life.hold(d.pick.address, d.pool.name)
    return life


async def queued(c: BalancerCore, n: int) -> None:
    assert c.admission is not None
    await wait_for(lambda: len(c.admission.queue) == n, f"{n} requests queued")


async def test_a_saturated_pool_lets_queued_requests_in_by_priority(tmp_path) -> None:
    c = core(tmp_path)
    saturate(c)
    let_in: list[str] = []
    tasks = []
    for objective in ("low", "high", "mid"):  # priorities 0, 10, 5, arriving in this order
        tasks.append(asyncio.create_task(request(c, objective, objective, let_in)))
        await queued(c, len(tasks))
    assert c.registry.get_sample_value("llmtraffic_balancer_queued_requests",
                                       {"pool": POOL, "priority": "10"}) == 1
    assert let_in == []  # nothing is let in while the pool has no room
    free(c)
    await asyncio.gather(*tasks)
    assert let_in == ["high", "mid", "low"]
    assert c.registry.get_sample_value("llmtraffic_balancer_queued_requests",
                                       {"pool": POOL, "priority": "10"}) == 0
    assert c.registry.get_sample_value("llmtraffic_balancer_queue_wait_seconds_count",
                                       {"pool": POOL, "outcome": "admitted"}) == 3


async def test_fifo_within_a_priority_and_newcomers_queue_behind(tmp_path) -> None:
    c = core(tmp_path)
    saturate(c)
    let_in: list[str] = []
    tasks = []
    for prompt in ("first", "second", "third"):
        tasks.append(asyncio.create_task(request(c, "mid", prompt, let_in)))
        await queued(c, len(tasks))
    report(c, 0, 0.1)  # room, but nobody has been let in yet: a newcomer waits its turn
    tasks.append(asyncio.create_task(request(c, "mid", "newcomer", let_in)))
    await asyncio.gather(*tasks)
    assert let_in == ["first", "second", "third", "newcomer"]


async def test_a_request_arriving_with_room_and_no_queue_goes_straight_in(tmp_path) -> None:
    c = core(tmp_path)
    report(c, 0, 0.1)
    life = await request(c, "low")
    assert life.address in (A, B) and c.admission is not None and not len(c.admission.queue)


async def test_the_bound_gives_429_and_a_higher_priority_displaces(tmp_path) -> None:
    c = core(tmp_path, max_queued=1)
    saturate(c)
    first = asyncio.create_task(request(c, "mid", "first"))
    await queued(c, 1)
    with pytest.raises(ApiError) as full:
        await request(c, "mid", "same priority")
    assert full.value.status == 429 and full.value.retry_after == 1.0
    assert "admission queue is full" in full.value.message and "--max-queued" in \
        full.value.message
    assert full.value.headers()["Retry-After"] == "1"
    high = asyncio.create_task(request(c, "high", "high"))
    with pytest.raises(ApiError) as displaced:
        await first
    assert displaced.value.status == 429 and "higher priority" in displaced.value.message
    assert c.stats.shed[(POOL, "tweet-summary", "queue_full")] == 2
    free(c)
    assert (await high).address is not None


async def test_a_request_waiting_past_the_timeout_gets_503(tmp_path) -> None:
    c = core(tmp_path, queue_timeout=0.05)
    saturate(c)
    with pytest.raises(ApiError) as e:
        await request(c, "high")
    assert e.value.status == 503 and e.value.retry_after == 1.0
    assert "--queue-timeout" in e.value.message and "priority 10" in e.value.message
    assert c.admission is not None and len(c.admission.queue) == 0
    assert c.stats.shed[(POOL, "tweet-summary", "queue_timeout")] == 1
    assert c.registry.get_sample_value("llmtraffic_balancer_queue_wait_seconds_count",
                                       {"pool": POOL, "outcome": "timed_out"}) == 1


async def test_a_client_that_leaves_while_queued_is_removed(tmp_path) -> None:
    c = core(tmp_path)
    saturate(c)
    gone = asyncio.create_task(request(c, "high", "gone"))
    let_in: list[str] = []
    stays = asyncio.create_task(request(c, "low", "stays", let_in))
    await queued(c, 2)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert c.admission is not None and len(c.admission.queue) == 1
    free(c)
    await stays
    assert let_in == ["stays"]
    assert c.registry.get_sample_value("llmtraffic_balancer_queue_wait_seconds_count",
                                       {"pool": POOL, "outcome": "left"}) == 1


async def test_a_request_let_in_then_finished_lets_the_next_in(tmp_path) -> None:
    """One at a time: the next waiter goes once the one let in took its pod; with a stale
    pod judged by in-flight counts, a finishing request frees the room."""
    c = core(tmp_path, queue_timeout=30)
    for a in (A, B):  # never scraped: judged by in-flight counts (room while <= 5)
        for _ in range(6):
            c.store.acquire(a)
    let_in: list[str] = []
    tasks = [asyncio.create_task(request(c, "low", p, let_in)) for p in ("x", "y")]
    await queued(c, 2)
    c.store.release(A)  # a request finishes elsewhere: room on A for one
    c.admission.poke()  # type: ignore[union-attr]
    await wait_for(lambda: let_in == ["x"], "x let in")
    assert len(c.admission.queue) == 1  # type: ignore[union-attr]
    life = await tasks[0]
    life.finish()  # x ends: A has room again
    await tasks[1]
    assert let_in == ["x", "y"]


async def test_negative_priority_is_still_shed_when_saturated(tmp_path) -> None:
    c = core(tmp_path)
    saturate(c)
    with pytest.raises(ApiError) as e:
        await request(c, "batch")
    assert e.value.status == 429 and "saturated" in e.value.message
    assert c.admission is not None and len(c.admission.queue) == 0


async def test_no_queue_with_max_queued_0_or_another_policy(tmp_path) -> None:
    for options in ({"max_queued": 0}, {"policy": "round-robin"}):
        c = core(tmp_path, **options)
        saturate(c)
        assert c.admission is None
        assert (await request(c, "low")).address in (A, B)  # scheduled at once
