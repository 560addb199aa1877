"""The circuit breaker on its own (time passed in), and through the router: every policy
skips a pod whose circuit is open, and a pod whose scrape failed, unless no pod is left."""

from __future__ import annotations

from collections import Counter

import pytest

from llmtraffic.balancer.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from llmtraffic.balancer.discovery import StaticDiscovery
from llmtraffic.balancer.policy.registry import POLICY_NAMES, make_policy
from llmtraffic.balancer.router import Router
from llmtraffic.contracts.store import MetricsStore, Pod, PodMetrics
from tests.balancer.conftest import BASE, LABELS, SEED_FILES

A, B = "10.0.0.1:8000", "10.0.0.2:8000"


def test_opens_after_n_failures_in_a_row_only():
    br = CircuitBreaker(failures=3, cooldown=10)
    for _ in range(5):  # a success in between starts the count again
        br.failed(A, 0)
        br.failed(A, 0)
        br.succeeded(A)
    assert br.state(A, 0) == CLOSED and not br.blocked(A, 0)
    assert [br.failed(A, 1) for _ in range(3)] == [False, False, True]
    assert br.state(A, 1) == OPEN and br.blocked(A, 10.9)
    assert br.opens == {A: 1} and br.open_circuits(2) == {A: OPEN}
    assert br.state(B, 1) == CLOSED


def test_half_open_lets_one_probe_through():
    br = CircuitBreaker(failures=1, cooldown=10)
    br.failed(A, 0)
    br.succeeded(A)  # an answer to a request sent before it opened changes nothing
    assert br.state(A, 5) == OPEN
    assert br.state(A, 10) == HALF_OPEN and not br.blocked(A, 10)
    br.sent(A, 10)  # the probe
    assert br.blocked(A, 10)  # no second request while the probe is out
    br.failed(A, 12)  # it failed: open for another cooldown from now
    assert br.state(A, 21) == OPEN and br.state(A, 22) == HALF_OPEN and br.opens == {A: 2}
    br.sent(A, 22)
    br.abandoned(A)  # the probe's client left: another probe may go
    assert not br.blocked(A, 22)
    br.sent(A, 22)
    br.succeeded(A)
    assert br.state(A, 22) == CLOSED and br.open_circuits(22) == {}


def test_forget_and_bad_settings():
    br = CircuitBreaker(failures=1, cooldown=1)
    br.failed(A, 0)
    br.forget([A])
    assert br.state(A, 0) == CLOSED and br.open_circuits(0) == {}
    with pytest.raises(ValueError, match="failures"):
        CircuitBreaker(failures=0)
    with pytest.raises(ValueError, match="cooldown"):
        CircuitBreaker(cooldown=0)


def make_router(policy: str, pods: int = 3) -> tuple[Router, MetricsStore, CircuitBreaker]:
    addresses = [f"10.0.0.{i}:8000" for i in range(pods)]
    view = StaticDiscovery(SEED_FILES, pods=[Pod(f"vllm-{i}", a, dict(LABELS))
                                             for i, a in enumerate(addresses)]).view()
    store = MetricsStore(stale_after=1e9)
    store.set_pods(view.pods)
    for a in addresses:
        store.update(a, PodMetrics(models=(BASE,)), 0.0)
    breaker = CircuitBreaker(failures=2, cooldown=60)
    router = Router(view.resources, store, make_policy(policy, seed=3), clock=lambda: 1.0,
                    seed=3, breaker=breaker)
    return router, store, breaker


def targets(router: Router, n: int = 60) -> Counter[str]:
    body = {"model": "tweet-summary", "prompt": "hello", "max_tokens": 1}
    return Counter(router.decide("test.com", body, chat=False).pick.address for _ in range(n))


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_every_policy_skips_broken_and_unscrapable_pods(policy):
    router, store, breaker = make_router(policy)
    assert len(targets(router)) == 3 or policy == "llm"
    breaker.failed("10.0.0.0:8000", 0.5)
    breaker.failed("10.0.0.0:8000", 0.5)
    store.mark_error("10.0.0.1:8000", "connect_error", 0.5)
    got = targets(router)
    assert set(got) == {"10.0.0.2:8000"}
    for _ in range(5):  # fallbacks avoid them too
        d = router.decide("test.com", {"model": "tweet-summary", "prompt": "x"}, chat=False)
        assert not set(d.pick.fallbacks) & {"10.0.0.0:8000", "10.0.0.1:8000"}

    breaker.failed("10.0.0.2:8000", 0.5)
    breaker.failed("10.0.0.2:8000", 0.5)
    # no pod qualifies: the last resort is every ready pod rather than refusing
    assert set(targets(router)) <= {"10.0.0.0:8000", "10.0.0.1:8000", "10.0.0.2:8000"}
