"""The live proxy under faults: scrape targets that time out, fail, answer garbage or vanish;
a pod killed under load and started again; a pod answering 500s (circuit breaker, proxy and
ext_proc); 1,000 clients leaving mid-stream."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import replace

import aiohttp
import openai
import orjson
import pytest

from llmtraffic.balancer.breaker import CLOSED, HALF_OPEN, OPEN
from llmtraffic.balancer.discovery import StaticDiscovery
from llmtraffic.balancer.extproc import ExtProcOptions, ExtProcServer
from llmtraffic.balancer.policy.registry import POLICY_NAMES
from llmtraffic.balancer.proxy import BalancerApp
from llmtraffic.contracts.store import Pod
from llmtraffic.simulator.server import SimServer, run_fleet_in_thread
from tests.balancer.conftest import (LABELS, LORAS, POOL, SEED_FILES, client, next_scrape,
                                     records, stop_pod, total_inflight, wait_for)

pytestmark = pytest.mark.e2e

LONG = {"ignore_eos": True}  # the simulator then generates exactly max_tokens


@pytest.fixture(scope="module")
def fleet():
    with run_fleet_in_thread(3, time_scale=50, lora_modules=LORAS, seed=51) as f:
        yield f


@pytest.fixture
def fleet4():
    """Four pods a test may kill and start again."""
    with run_fleet_in_thread(4, time_scale=20, lora_modules=LORAS, seed=61) as f:
        yield f


def picks(app: BalancerApp, pod: str) -> float:
    """Attempts the balancer sent to pod `pod` (by name) so far."""
    return sum(v for (_, name, _), v in app.stats.picks.items() if name == pod)


async def restart_pod(fleet, i: int) -> None:
    """Start pod i of a thread-hosted fleet again on its old port, with an empty engine."""
    old = fleet.servers[i]
    new = SimServer(replace(old.options, port=old.port))
    fut = asyncio.run_coroutine_threadsafe(new.start(), fleet.loop)
    await asyncio.wait_for(asyncio.wrap_future(fut), 30)
    fleet.servers[i] = new


# ---- scrape targets that fail ------------------------------------------------------------------
@pytest.mark.parametrize("policy", POLICY_NAMES)
async def test_bad_scrape_targets_are_marked_and_get_no_requests(policy, fleet, fakes,
                                                                 make_app):
    bad = {mode: await fakes(metrics=mode) for mode in ("timeout", "500", "garbage")}
    vanishing = await fakes()
    addresses = fleet.addresses + [p.address for p in bad.values()] + [vanishing.address]
    app = await make_app(addresses, policy=policy, scrape_timeout=0.5)
    # the start's scrape already marked them
    state = app.store.snapshot(time.monotonic()).by_address()
    assert {mode: state[p.address].last_error for mode, p in bad.items()} == \
        {"timeout": "timeout", "500": "http_500", "garbage": "parse_error"}
    assert all(p.hits["/metrics"] >= 1 for p in bad.values())
    c = client(app)

    async def burst(tag: str, n: int = 24) -> None:
        out = await asyncio.gather(*(c.completions.create(
            model="llama2", prompt=f"{tag} {i}", max_tokens=2) for i in range(n)))
        assert all(r.choices for r in out)

    await burst("before")
    assert vanishing.requests > 0  # a good pod while it lasts
    await vanishing.stop()
    await wait_for(lambda: app.store.snapshot(time.monotonic()).by_address()[
        vanishing.address].last_error is not None, "the vanished pod to be marked")
    sent_before = picks(app, "vllm-6")
    await burst("after")
    await burst("later")
    assert picks(app, "vllm-6") == sent_before  # not even an attempt once it was marked
    recs = records(app)
    assert len(recs) == 72 and {x["response_code"] for x in recs} == {200}
    assert not {x["upstream_host"] for x in recs} & {p.address for p in bad.values()}
    assert [p.requests for p in bad.values()] == [0, 0, 0]
    assert total_inflight(app) == 0


# ---- a pod killed under load, then started again -------------------------------------------------
async def test_pod_killed_under_load_is_out_then_back(fleet4, make_app):
    app = await make_app(fleet4.addresses)
    c = client(app, timeout=20)  # a hang shows up as APITimeoutError
    victim, name = fleet4.addresses[0], "vllm-0"
    stop = asyncio.Event()
    ids = itertools.count()
    results: dict[str, str] = {}  # request id -> ok | error | hang

    async def worker(w: int) -> None:
        while not stop.is_set():
            rid = f"req-{next(ids)}"
            try:
                if w % 2:
                    async for _ in await c.completions.create(
                            model="llama2", prompt=f"stream {rid}", max_tokens=40, stream=True,
                            extra_body=LONG, extra_headers={"X-Request-Id": rid}):
                        pass
                else:
                    await c.completions.create(model="llama2", prompt=f"whole {rid}",
                                               max_tokens=40, extra_body=LONG,
                                               extra_headers={"X-Request-Id": rid})
                results[rid] = "ok"
            except openai.APITimeoutError:
                results[rid] = "hang"
            except openai.APIError:
                results[rid] = "error"

    workers = [asyncio.create_task(worker(w)) for w in range(12)]

    def victim_generating() -> bool:
        s = app.store.snapshot(time.monotonic()).by_address()[victim]
        return s.metrics is not None and s.metrics.running > 0 and s.last_error is None

    await wait_for(victim_generating, "the victim pod to be generating")
    cut = app.store.inflight(victim)
    await stop_pod(fleet4, 0)
    await wait_for(lambda: app.store.scrape_errors(victim) > 0, "a failed scrape of the victim")
    out_at = picks(app, name)  # from its first failed scrape on, no request may go there
    done = len(results)
    await wait_for(lambda: len(results) >= done + 40, "40 more requests")
    assert picks(app, name) == out_at

    await restart_pod(fleet4, 0)
    await wait_for(lambda: picks(app, name) > out_at, "traffic to the restarted pod")
    back = len(results)
    await wait_for(lambda: len(results) >= back + 24, "24 more requests")
    stop.set()
    await asyncio.wait_for(asyncio.gather(*workers), 60)

    assert "hang" not in results.values()
    await wait_for(lambda: total_inflight(app) == 0, "in-flight counts back to 0")
    recs = {x["request_id"]: x for x in records(app)}
    assert set(recs) == set(results)
    failed = [recs[r] for r, v in results.items() if v != "ok"]
    # only requests that were running on the victim when it died failed; the others,
    # those sent to it before it was marked included, were retried elsewhere
    assert len(failed) <= cut
    assert all(x["upstream_host"] == victim and x["response_code"] != 200 for x in failed)
    assert sum(x["response_code"] == 200 and x["upstream_host"] == victim
               for x in recs.values()) > 0


# ---- a pod answering 500: the circuit breaker ----------------------------------------------------
async def test_pod_answering_500s_is_circuit_broken(fleet, fakes, make_app):
    broken = await fakes(answer="500")
    app = await make_app(fleet.addresses + [broken.address], policy="round-robin",
                         breaker_failures=3, breaker_cooldown=3600)
    breaker = app.core.breaker
    c = client(app)
    errors = 0

    async def one() -> None:
        nonlocal errors
        try:
            await c.completions.create(model="llama2", prompt="hi", max_tokens=1)
        except openai.InternalServerError as e:
            assert e.status_code == 500 and "engine died" in e.message
            errors += 1

    for _ in range(16):  # round-robin: one in four goes there until its circuit opens
        await one()
    assert broken.requests == 3 and errors == 3
    assert breaker.state(broken.address, time.monotonic()) == OPEN
    for _ in range(8):
        await one()
    assert broken.requests == 3

    breaker.cooldown = 0.01  # (a test knob) the cooldown is over: one probe goes there ...
    await wait_for(lambda: breaker.state(broken.address, time.monotonic()) == HALF_OPEN,
                   "half-open")
    for _ in range(4):
        await one()
    assert broken.requests == 4 and errors == 4  # ... fails, and the circuit opens again
    breaker.cooldown = 3600
    for _ in range(8):
        await one()
    assert broken.requests == 4

    broken.answer = "ok"  # the pod recovers; after the cooldown the probe succeeds
    breaker.cooldown = 0.01
    await wait_for(lambda: breaker.state(broken.address, time.monotonic()) == HALF_OPEN,
                   "half-open")
    for _ in range(4):
        await one()
    assert broken.requests == 5 and breaker.state(broken.address, time.monotonic()) == CLOSED
    for _ in range(8):
        await one()
    assert broken.requests == 7 and errors == 4  # back in the rotation: 2 of 8
    reg = app.registry
    assert reg.get_sample_value("llmtraffic_balancer_circuit_opens_total",
                                {"pool": POOL, "pod": "vllm-3"}) == 2
    assert reg.get_sample_value("llmtraffic_balancer_circuit_open",
                                {"pool": POOL, "pod": "vllm-3"}) == 0
    assert reg.get_sample_value("llmtraffic_balancer_circuit_opens_total",
                                {"pool": POOL, "pod": "vllm-0"}) == 0


async def test_ext_proc_picker_breaks_the_circuit_of_a_pod_answering_500s(fakes, tmp_path):
    from tests.balancer.test_extproc import FakeEnvoy

    good, broken = await fakes(), await fakes(answer="500")
    pods = [Pod(f"vllm-{i}", p.address, dict(LABELS)) for i, p in enumerate((good, broken))]
    server = ExtProcServer(StaticDiscovery(SEED_FILES, pods=pods), ExtProcOptions(
        listen="127.0.0.1:0", health_listen="127.0.0.1:0", policy="round-robin", seed=7,
        scrape_interval=0.05, breaker_failures=2, breaker_cooldown=3600,
        access_log=str(tmp_path / "access.log")))
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            envoy = FakeEnvoy(server.port, http)
            statuses = [(await envoy.send({"model": "tweet-summary", "prompt": "hi",
                                           "max_tokens": 1})).status for _ in range(10)]
            await envoy.close()
    finally:
        await server.stop()
    assert broken.requests == 2 and sorted(statuses) == [200] * 8 + [500] * 2
    assert server.core.breaker.opens == {broken.address: 1}


# ---- 1,000 clients leaving mid-stream ------------------------------------------------------------
async def test_a_thousand_clients_leaving_mid_stream_leak_nothing(fleet, make_app):
    app = await make_app(fleet.addresses)
    url = f"http://127.0.0.1:{app.port}/v1/completions"
    gate = asyncio.Semaphore(100)
    left = {"after_headers": 0, "after_a_chunk": 0}

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        body = orjson.dumps({"model": "llama2", "prompt": f"tell me a long story {i}",
                             "max_tokens": 2000, "stream": True, "ignore_eos": True})
        async with gate:
            resp = await session.post(url, data=body, headers={"Host": "test.com"})
            assert resp.status == 200
            if i % 2:
                async for line in resp.content:
                    if line.startswith(b"data: {"):
                        break
                left["after_a_chunk"] += 1
            else:
                left["after_headers"] += 1
            resp.close()  # hang up: the connection is dropped mid-stream

    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=conn) as session:
        await asyncio.wait_for(asyncio.gather(*(one(session, i) for i in range(1000))), 120)
    assert left == {"after_headers": 500, "after_a_chunk": 500}

    await wait_for(lambda: total_inflight(app) == 0, "in-flight counts back to 0", 30)
    await wait_for(lambda: len(records(app)) == 1000, "1,000 access-log lines", 30)
    assert {(x["response_code"], x["response_flags"]) for x in records(app)} == {(499, "DC")}
    pool = app._pool
    assert pool is not None
    await wait_for(lambda: pool.in_use == 0, "no upstream connection in use")
    await next_scrape(app)
    await wait_for(lambda: all(p.metrics.running == 0 and p.metrics.waiting == 0 for p in
                               app.store.snapshot(time.monotonic()).pods if p.metrics),
                   "the pods to drop every abandoned request", 30)
    for s in fleet.servers:
        assert not s._live  # no request left alive inside a pod
