"""The `llm` policy's native core (`balancer.policy._native`) must pick exactly as the
pure-Python reference does (address, fallbacks, reason, sheds, the random tie-break), over
thousands of picks on fleets churned like the live balancer churns its store (scrapes,
in-flight counts, errors, pods going unready, membership changes). The test command builds
the native core; these tests fail, not skip, when it is missing."""

from __future__ import annotations

import random

import pytest

from llmtraffic.balancer.policy import native
from llmtraffic.balancer.policy.llm import LLMPolicy
from llmtraffic.balancer.policy.prefix import block_hashes
from llmtraffic.balancer.policy.settings import PolicyConfig
from llmtraffic.balancer.policy.request import LLMRequest, Pick
from llmtraffic.contracts.store import MetricsStore, Pod, PodMetrics

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


CONFIGS = {  # the defaults, and weights and limits that reach other branches
    "defaults": PolicyConfig(),
    "no-prefix": PolicyConfig(prefix_weight=0, fallbacks=0),
    "odd": PolicyConfig(queue_weight=0.7, kv_weight=0, lora_weight=3.3, prefix_weight=1.1,
                        prefix_queue_tokens=0, queue_threshold=0, kv_threshold=0.3,
                        fallbacks=5, prefix_lru_per_pod=6),
    # the scorers composed in another order, one left out, one at weight 0
    "reordered": PolicyConfig(scorers={"prefix": 2.5, "lora": 0.0, "queue": 1.5}),
}


@pytest.mark.parametrize("size,config", [(1, "defaults"), (3, "defaults"), (20, "defaults"),
                                         (100, "defaults"), (7, "no-prefix"), (12, "odd"),
                                         (9, "reordered")])
def test_native_picks_equal_python_picks(size, config):
    assert native.core is not None, f"the native core is not built: {native.missing}"
    rng = random.Random(size)
    pods = [Pod(f"p{i}", f"10.0.0.{i}:8000", {"app": "x"}, "pool") for i in range(size)]
    store = MetricsStore(stale_after=2.0)
    store.set_pods(pods)
    for p in pods:
        if rng.random() < 0.9:
            store.update(p.address, random_metrics(rng), 0.0)
    cfg = CONFIGS[config]
    fast, slow = LLMPolicy(cfg, seed=7, native=True), LLMPolicy(cfg, seed=7, native=False)
    gone: list[Pod] = []
    reasons: set[str] = set()
    for k in range(1500):
        now = k * 0.01
        snap = store.snapshot(now)
        req = request(rng)
        a, b = fast.pick(req, snap), slow.pick(req, snap)
        assert a == b, (k, a, b)
        if k % 50 == 0:  # both prefix indexes hold the same
            h = block_hashes(req.adapter or req.target_model, req.prompt)
            assert fast.prefix.match(h) == slow.prefix.match(h)
        if isinstance(a, Pick):
            store.acquire(a.address)
            reasons.add(a.reason)
        else:
            reasons.add(str(a.status))
        for _ in range(rng.randint(0, 3)):
            churn(store, pods, gone, rng, now)
    want = {"llm:load", "llm:lora"} | ({"llm:prefix"} if cfg.prefix_weight else set())
    assert want <= reasons  # every branch was compared


def test_the_native_core_refuses_bad_arguments_clearly():
    """Wrong types reach `PodTable.pick` only through a bug; they raise, never crash."""
    table = LLMPolicy(native=True).native_table()
    store = MetricsStore()
    store.set_pods([Pod("p0", "10.0.0.0:8000", {}, "pool")])
    pods = store.snapshot(0.0).pods
    ok = (pods, None, {}, 10, False, {}, random.Random(1).randrange, 3)
    top, fallbacks, reason = table.pick(*ok)
    assert top is pods[0] and fallbacks == () and reason == "llm:load"
    for at, bad, error in [(0, [*pods], TypeError), (2, [], TypeError),
                           (7, 0, ValueError), (3, "x", TypeError), (0, (object(),),
                                                                     AttributeError)]:
        args = list(ok)
        args[at] = bad
        with pytest.raises(error):
            table.pick(*args)
    with pytest.raises(TypeError):
        table.pick(*ok[:7])
    assert table.pick(*ok)[0] is pods[0]  # still consistent after the errors


def test_a_balancer_without_the_native_core_says_so_and_still_routes(monkeypatch, caplog):
    """Without a C compiler at install time the balancer runs the Python core: it warns
    once at start, saying how to build the native one, and picks as usual."""
    from pathlib import Path

    from llmtraffic.balancer.core import BalancerCore
    from llmtraffic.balancer.discovery import StaticDiscovery

    seed = Path(__file__).resolve().parents[2] / "deploy" / "seed"
    discovery = StaticDiscovery([str(seed / f) for f in ("inferencepool.yaml",
                                                         "inferencemodel.yaml",
                                                         "llmroute.yaml")])
    monkeypatch.setattr(native, "core", None)
    monkeypatch.setattr(native, "missing", "No module named 'llmtraffic.balancer.policy._native'")
    with caplog.at_level("WARNING", logger="llmtraffic.balancer.core"):
        core = BalancerCore(discovery)
    assert core.policy.native is False
    assert any("native core is not built" in r.getMessage() and "_native" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(RuntimeError, match="not built"):
        LLMPolicy(native=True)
    monkeypatch.undo()
    caplog.clear()
    with caplog.at_level("WARNING", logger="llmtraffic.balancer.core"):
        assert BalancerCore(discovery).policy.native is True
    assert not caplog.records


def test_pools_picked_in_turn_pick_as_python_does():
    """One policy serves every pool; the native core keeps a table per pool, and picks
    from pools taken in turn (same sizes, different pods) equal the reference's."""
    rng = random.Random(5)
    stores, fleets = {}, {}
    for pool, base in (("a", 0), ("b", 100), ("c", 200)):
        fleets[pool] = [Pod(f"{pool}{i}", f"10.0.1.{base + i}:8000", {}, pool) for i in range(6)]
        stores[pool] = MetricsStore(stale_after=2.0)
        stores[pool].set_pods(fleets[pool])
        for p in fleets[pool]:
            stores[pool].update(p.address, random_metrics(rng), 0.0)
    fast, slow = LLMPolicy(seed=3, native=True), LLMPolicy(seed=3, native=False)
    for k in range(900):
        pool = "abc"[k % 3] if k < 600 else rng.choice("abc")
        req = request(rng)
        req.pool = pool
        snap = stores[pool].snapshot(k * 0.01)
        a, b = fast.pick(req, snap), slow.pick(req, snap)
        assert a == b, (k, a, b)
        if isinstance(a, Pick):
            stores[pool].acquire(a.address)
        if rng.random() < 0.3:
            stores[pool].update(rng.choice(fleets[pool]).address, random_metrics(rng), k * 0.01)
