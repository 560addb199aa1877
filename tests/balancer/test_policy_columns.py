"""The `llm` policy scores large pools with vector operations over columns kept from pick
to pick, small ones pod by pod; both must pick exactly alike (address, fallbacks, reason,
sheds), over thousands of picks on fleets churned like the live balancer churns its store
(scrapes, in-flight counts, errors, pods going unready, membership changes)."""

from __future__ import annotations

import random

import pytest

from balancer.policy.llm import VECTOR_FROM, LLMPolicy
from balancer.policy.request import LLMRequest, Pick
from exporter.store import MetricsStore, Pod, PodMetrics

ADAPTERS = [f"lora-{i}" for i in range(10)]
SYSTEMS = [f"system prompt {i}: " + "be careful and brief. " * 30 for i in range(4)]


def random_metrics(rng: random.Random) -> PodMetrics:
    running = tuple(rng.sample(ADAPTERS, rng.randint(0, 4)))
    waiting = tuple(rng.sample([a for a in ADAPTERS if a not in running], rng.randint(0, 2)))
    return PodMetrics(waiting=float(rng.choice([0, 0, 1, 2, 5, 9])),
                      kv_usage=rng.choice([0.0, 0.3, rng.random(), 1.2]),
                      running_adapters=running, waiting_adapters=waiting,
                      max_lora=rng.choice([4, 4, 0]), block_size=16, num_gpu_blocks=64)


def churn(store: MetricsStore, pods: list[Pod], gone: list[Pod], rng: random.Random,
          now: float) -> None:
    """What happens to a live store between two picks."""
    p = rng.choice(pods)
    roll = rng.random()
    if roll < 0.3:
        store.update(p.address, random_metrics(rng), now)
    elif roll < 0.4:
        store.release(p.address)
    elif roll < 0.45:
        store.mark_error(p.address, "timeout", now)
    elif roll < 0.47:  # it goes unready or comes back
        pods[:] = [Pod(q.name, q.address, q.labels, q.pool, ready=not q.ready)
                   if q is p else q for q in pods]
        store.set_pods(pods)
    elif roll < 0.5:  # it leaves the pool, or the last one to leave comes back first
        if len(pods) > 1:
            pods.remove(p)
            gone.append(p)
        if gone and rng.random() < 0.5:
            pods.insert(0, gone.pop())
        store.set_pods(pods)


def request(rng: random.Random) -> LLMRequest:
    adapter = rng.choice(ADAPTERS) if rng.random() < 0.7 else None
    text = rng.choice(SYSTEMS) + f"question {rng.randrange(50)} " * rng.randint(1, 40)
    return LLMRequest(model=adapter or "base", target_model=adapter or "base",
                      adapter=adapter, prompt=text, prompt_tokens=len(text) // 4 + 1,
                      criticality=rng.choice(["Critical", "Standard", "Sheddable"]),
                      pool="pool")


@pytest.mark.parametrize("size", [1, 3, 20, 100])
def test_vectorised_picks_equal_pod_by_pod_picks(size):
    assert 3 < VECTOR_FROM < 100  # the default sends these sizes both ways
    rng = random.Random(size)
    pods = [Pod(f"p{i}", f"10.0.0.{i}:8000", {"app": "x"}, "pool") for i in range(size)]
    store = MetricsStore(stale_after=2.0)
    store.set_pods(pods)
    for p in pods:
        if rng.random() < 0.9:
            store.update(p.address, random_metrics(rng), 0.0)
    fast, slow = LLMPolicy(seed=7), LLMPolicy(seed=7)
    fast.vector_from, slow.vector_from = 0, 10**9  # force each way of scoring
    gone: list[Pod] = []
    reasons: set[str] = set()
    for k in range(1500):
        now = k * 0.01
        snap = store.snapshot(now)
        req = request(rng)
        a, b = fast.pick(req, snap), slow.pick(req, snap)
        assert a == b, (k, a, b)
        cols = fast._columns
        assert (cols.n_usable, cols.n_ready) == (cols.usable.sum(), cols.ready.sum())
        if isinstance(a, Pick):
            store.acquire(a.address)
            reasons.add(a.reason)
        else:
            reasons.add(str(a.status))
        for _ in range(rng.randint(0, 3)):
            churn(store, pods, gone, rng, now)
    assert {"llm:load", "llm:lora", "llm:prefix"} <= reasons  # every branch was compared
