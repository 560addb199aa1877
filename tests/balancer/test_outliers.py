"""Pods judged by what they do, not by their /metrics page (which says idle throughout): a
pod that never answers, answers a fast 404, sends broken chunking or two Content-Lengths,
answers 200 with no choices, or sends a body or a stream without end gets a breaker strike
per wrong answer (or is ejected at once for hoarding requests), leaves the rotation, and the
requests it held before any byte reached the client are served by another pod."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from llmtraffic.balancer.breaker import CLOSED, OPEN
from tests.balancer.conftest import BASE, records, total_inflight, wait_for
from tests.fixtures.fakepod import FakePod

pytestmark = pytest.mark.e2e

BAD_MODES = ("hang", "404", "bad-chunking", "two-content-lengths", "no-choices",
             "endless-body")


@pytest.fixture
async def pods():
    started: list[FakePod] = []

    async def make(answer: str) -> FakePod:
        pod = await FakePod(BASE, answer=answer).start()
        started.append(pod)
        return pod

    yield make
    for pod in started:
        await pod.stop()


async def post(port: int, body: dict, session: aiohttp.ClientSession) -> tuple[int, bytes]:
    async with session.post(f"http://127.0.0.1:{port}/v1/completions", json=body,
                            headers={"Host": "test.com"}) as r:
        return r.status, await r.read()


@pytest.mark.parametrize("mode", BAD_MODES)
async def test_a_misbehaving_pod_leaves_the_rotation_and_its_requests_go_elsewhere(
        mode, pods, make_app):
    bad, good = await pods(mode), await pods("ok")
    app = await make_app([bad.address, good.address], max_response_bytes=1 << 20,
                         idle_timeout=30)
    # in rounds of 10, so its strikes add up between them; a black hole is found by the
    # requests it hoards, so it gets them all at once
    rounds = 1 if mode == "hang" else 4
    answers = []
    async with aiohttp.ClientSession() as s:
        for r in range(rounds):
            answers += await asyncio.wait_for(asyncio.gather(*[
                post(app.port, {"model": "llama2", "prompt": f"hi {r} {i}", "max_tokens": 4},
                     s) for i in range(40 // rounds)]), 60)  # a hang detector
    assert [status for status, _ in answers] == [200] * 40, answers[:3]
    assert all(orjson.loads(body)["choices"] for _, body in answers)
    assert app.core.breaker.state(bad.address, app.store.snapshot(0).now) != CLOSED
    assert app.core.breaker.opens[bad.address] >= 1 and good.address not in app.core.breaker.opens
    # 5 strikes in a row, then no more; a black hole takes its share of what was sent at
    # once (half of the 40), and is ejected once it has hoarded 2 or more for a second
    assert bad.requests <= (20 if mode == "hang" else 10)
    recs = records(app)
    assert len(recs) == 40 and {r["response_code"] for r in recs} == {200}
    assert {r["upstream_host"] for r in recs} == {good.address}
    await wait_for(lambda: total_inflight(app) == 0, "in-flight counts back to 0")


async def test_broken_http_from_the_only_pod_is_a_502_in_openai_shape_and_logged(
        pods, make_app):
    bad = await pods("two-content-lengths")
    app = await make_app([bad.address], retries=0)
    async with aiohttp.ClientSession() as s:
        status, body = await post(app.port, {"model": "llama2", "prompt": "hi"}, s)
    assert status == 502
    err = orjson.loads(body)["error"]
    assert err["code"] == 502 and "broken HTTP response head" in err["message"]
    (rec,) = records(app)
    assert rec["response_code"] == 502 and rec["response_flags"] == "UPE"


async def test_an_endless_stream_is_cut_after_max_tokens_events(pods, make_app):
    bad = await pods("endless-stream")
    app = await make_app([bad.address])
    events = 0
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{app.port}/v1/completions",
                          json={"model": "llama2", "prompt": "hi", "max_tokens": 16,
                                "stream": True}, headers={"Host": "test.com"}) as r:
            async for line in r.content:
                if line.startswith(b"data:"):
                    events += 1
                    last = line
    assert events == 16 + 64 + 1  # max_tokens + 64, then our error event
    assert b"failed mid-stream" in last and b"past 80 events" in last
    (rec,) = records(app)
    assert rec["response_code"] == 502 and rec["response_flags"] == "UC"
    assert app.core.breaker._circuits[bad.address].failures == 1


async def test_an_endless_body_is_cut_at_max_response_bytes(pods, make_app):
    bad = await pods("endless-body")
    app = await make_app([bad.address], retries=0, max_response_bytes=1 << 20)
    async with aiohttp.ClientSession() as s:
        status, body = await post(app.port, {"model": "llama2", "prompt": "hi"}, s)
    assert status == 502 and b"larger than 1048576 bytes" in body
    assert app.core.breaker._circuits[bad.address].failures == 1


async def test_a_pod_hoarding_requests_is_ejected_and_they_are_retried(pods, make_app):
    """Its page says idle while 8 of our requests sit there: ejected after a second (no
    timeout needed), and the 8 go to the other pod before any byte reached their clients."""
    hole, good = await pods("hang"), await pods("ok")
    app = await make_app([hole.address, good.address], policy="round-robin",
                         idle_timeout=600, breaker_cooldown=1.0)
    async with aiohttp.ClientSession() as s:
        answers = await asyncio.wait_for(asyncio.gather(*[
            post(app.port, {"model": "llama2", "prompt": f"{i}"}, s) for i in range(16)]), 60)
    assert [a[0] for a in answers] == [200] * 16
    assert hole.requests == 8
    assert "requests of ours in flight there for" in app.core.breaker.reasons[hole.address]
    recs = records(app)
    assert len(recs) == 16 and {r["upstream_host"] for r in recs} == {good.address}

    # after the cooldown one probe goes there: it hangs too, so it decides alone (its one
    # unanswered request), the circuit opens again and the probe's client is served
    await wait_for(lambda: app.core.breaker.state(hole.address, time.monotonic()) != OPEN,
                   "the cooldown")
    async with aiohttp.ClientSession() as s:
        for i in range(10):
            status, _ = await asyncio.wait_for(post(app.port, {"model": "llama2",
                                                               "prompt": f"p{i}"}, s), 60)
            assert status == 200
            if hole.requests == 9:
                break
    assert hole.requests == 9 and app.core.breaker.opens[hole.address] == 2
    assert "probe request failed" in app.core.breaker.reasons[hole.address]


async def test_a_bug_in_the_balancer_is_a_500_in_openai_shape_and_logged(pods, make_app,
                                                                         monkeypatch, caplog):
    good = await pods("ok")
    app = await make_app([good.address])

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(app.core.router, "decide", broken)
    async with aiohttp.ClientSession() as s:
        status, body = await post(app.port, {"model": "llama2", "prompt": "hi"}, s)
    assert status == 500 and orjson.loads(body)["error"]["code"] == 500
    assert b"a bug" not in body and "RuntimeError: a bug" in caplog.text
    (rec,) = records(app)
    assert rec["response_code"] == 500 and good.requests == 0
