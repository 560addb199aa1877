"""The `llm` policy scores vectorised over columns kept from pick to pick; here it must pick
exactly as the policy written pod by pod from its documented formulas, over thousands of
picks on fleets churned like the live balancer churns its store (scrapes, in-flight
counts, errors, pods going unready, membership changes)."""

from __future__ import annotations

import random

import pytest

from balancer.policy.llm import LLMPolicy
from balancer.policy.lora import FREE_SLOT, NONE, RUNNING, WAITING
from balancer.policy.prefix import block_hashes, net_saved
from balancer.policy.request import LLMRequest, Pick, Shed, no_endpoint
from exporter.store import MetricsStore, Pod, PodMetrics, PodState, Snapshot

ADAPTERS = [f"lora-{i}" for i in range(10)]
SYSTEMS = [f"system prompt {i}: " + "be careful and brief. " * 30 for i in range(4)]


def tier(p: PodState, adapter: str) -> float:
    m = p.metrics
    if m is None:
        return FREE_SLOT
    if adapter in m.running_adapters:
        return RUNNING
    if m.max_lora <= 0 or len(m.running_adapters) < m.max_lora:
        return FREE_SLOT
    return WAITING if adapter in m.waiting_adapters else NONE


class PodByPod(LLMPolicy):
    """The reference: every pod scored in a plain loop."""

    def pick(self, request: LLMRequest, snapshot: Snapshot) -> Pick | Shed:
        cfg = self.config
        pods = [p for p in snapshot.pods if p.pod.ready and p.last_error is None] \
            or [p for p in snapshot.pods if p.pod.ready]
        if not pods:
            return no_endpoint(snapshot)
        if request.criticality == "Sheddable" and not any(
                p.fresh and p.queue <= cfg.queue_threshold and p.kv_usage <= cfg.kv_threshold
                for p in pods):
            return Shed(429, "pool saturated: no pod with queue <= "
                        f"{cfg.queue_threshold:g} and KV cache <= {cfg.kv_threshold:g}",
                        cfg.retry_after_s)
        lo, hi = min(p.queue for p in pods), max(p.queue for p in pods)
        hashes = block_hashes(request.adapter or request.target_model, request.prompt)
        matched = self.prefix.match(hashes)
        scores, prefixed = [], set()
        for i, p in enumerate(pods):
            q = 1.0 if hi == lo else (hi - p.queue) / (hi - lo)
            s = cfg.queue_weight * q + cfg.kv_weight * (1.0 - min(1.0, max(0.0, p.kv_usage)))
            if request.adapter is not None:
                s = s + cfg.lora_weight * tier(p, request.adapter)
            if p.address in matched:
                x = net_saved(matched[p.address], p.queue - lo,
                              max(cfg.prefix_queue_tokens,
                                  self._uncached.get(p.address, request.prompt_tokens)),
                              request.prompt_tokens)
                if x > 0:
                    s += cfg.prefix_weight * x
                    prefixed.add(i)
            scores.append(s)
        ranked = sorted(range(len(pods)), key=lambda i: (-scores[i], i))
        tied = [i for i in ranked if scores[i] == scores[ranked[0]]]
        if len(tied) > 1:
            first = tied[self._rng.randrange(len(tied))]
            ranked = [first, *[i for i in ranked if i != first]]
        top = pods[ranked[0]]
        reason = "prefix" if ranked[0] in prefixed else "lora" if (
            request.adapter is not None and tier(top, request.adapter) == RUNNING) else "load"
        self.remember(top, request, hashes, matched.get(top.address, 0))
        return Pick(top.address, tuple(pods[i].address for i in ranked[1:3]), f"llm:{reason}")


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
    rng = random.Random(size)
    pods = [Pod(f"p{i}", f"10.0.0.{i}:8000", {"app": "x"}, "pool") for i in range(size)]
    store = MetricsStore(stale_after=2.0)
    store.set_pods(pods)
    for p in pods:
        if rng.random() < 0.9:
            store.update(p.address, random_metrics(rng), 0.0)
    fast, slow = LLMPolicy(seed=7), PodByPod(seed=7)
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
