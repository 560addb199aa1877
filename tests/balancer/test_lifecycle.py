"""One request's life as both front ends live it: the in-flight slot it holds, what the
circuit breaker hears, the counts, and exactly one record at the end, whatever happened."""

from __future__ import annotations

from llmtraffic.balancer.core import BalancerCore
from llmtraffic.balancer.discovery import StaticDiscovery
from llmtraffic.balancer.lifecycle import RequestLifecycle
from llmtraffic.balancer.options import BalancerOptions
from llmtraffic.balancer.router import ApiError
from tests.balancer.conftest import POOL, SEED_FILES, seed_pods

A, B = "10.9.0.1:8000", "10.9.0.2:8000"


def core(failures: int = 1) -> tuple[BalancerCore, list]:
    c = BalancerCore(StaticDiscovery(SEED_FILES, pods=seed_pods([A, B])),
                     BalancerOptions(breaker_failures=failures, seed=1))
    logged: list = []
    c.log = logged.append  # type: ignore[method-assign]
    return c, logged


def test_a_held_request_counts_in_flight_until_released_and_logs_once() -> None:
    c, logged = core()
    life = RequestLifecycle(c, path="/v1/completions")
    life.hold(A, POOL, pick_seconds=0.001)
    assert c.store.inflight(A) == 1 and life.rec.upstream_host == A
    assert life.rec.pod == "vllm-0" and life.rec.lb_policy == "llm"
    life.answered(200)
    life.release()
    life.release()  # twice is once
    assert c.store.inflight(A) == 0
    life.finish()
    assert logged == [life.rec] and life.rec.duration_ms is not None
    assert c.stats.picks == {(POOL, "vllm-0", "llm"): 1.0}


def test_the_breaker_hears_one_verdict_per_attempt() -> None:
    c, _ = core(failures=1)
    life = RequestLifecycle(c)
    life.hold(A, POOL)
    life.answered(503)
    life.answered(200)  # already judged: not heard
    life.release()
    assert c.breaker.open_circuits(0.0) == {A: "open"}
    life.hold(B, POOL, attempt=1)  # a retry: counted, no pick time
    life.failed("proxy: ClientConnectorError")
    life.finish()
    assert c.store.inflight(B) == 0 and c.breaker.opens == {A: 1, B: 1}
    assert c.stats.retries == {(POOL,): 1.0}
    (b,) = [p for p in c.store.snapshot(0.0).pods if p.pod.address == B]
    assert b.last_error == "proxy: ClientConnectorError"


def test_a_request_ended_before_its_answer_leaves_no_verdict_and_is_flagged() -> None:
    c, logged = core()
    life = RequestLifecycle(c)
    life.hold(A, POOL)
    life.finish(ended=False)
    assert c.store.inflight(A) == 0 and c.breaker.open_circuits(0.0) == {}
    assert logged[0].response_flags == "DC"


def test_the_slot_follows_the_request_to_a_fallback() -> None:
    c, _ = core()
    life = RequestLifecycle(c)
    life.hold(A, POOL)
    life.move("10.9.9.9:8000")  # not a pod: ignored
    life.move(B)
    assert (c.store.inflight(A), c.store.inflight(B)) == (0, 1)
    assert (life.rec.upstream_host, life.rec.pod) == (B, "vllm-1")
    life.finish()
    assert c.store.inflight(B) == 0


def test_a_refusal_is_counted_as_shed_and_logged() -> None:
    c, logged = core()
    life = RequestLifecycle(c)
    e = ApiError(429, "pool saturated")
    e.model, e.pool = "m", POOL
    life.refuse(e)
    life.finish()
    assert logged[0].response_code == 429 and logged[0].model == "m"
    assert c.stats.shed == {(POOL, "m", "shed"): 1.0}
