"""`MetricsStore.snapshot` rebuilds only what changed since the last one; here it must always
equal a from-scratch reading of the store's history (membership, scrapes, errors, in-flight
counts, metrics ageing into staleness, a clock that goes back) and hand unchanged pods out
as the same objects."""

from __future__ import annotations

import random

import pytest

from llmtraffic.contracts.store import MetricsStore, Pod, PodMetrics


@pytest.mark.parametrize("seed", range(6))
def test_incremental_snapshots_equal_a_fresh_reading(seed):
    rng = random.Random(seed)
    store = MetricsStore(stale_after=2.0)
    addresses = [f"10.0.0.{i}:8000" for i in range(rng.randint(1, 40))]
    shadow: dict[str, dict] = {}

    def set_pods() -> None:
        chosen = [a for a in addresses if rng.random() < 0.8] or addresses[:1]
        pools = ["pool-a"] if rng.random() < 0.6 else ["pool-a", "pool-b"]
        store.set_pods([Pod(a, a, {}, rng.choice(pools), ready=rng.random() < 0.9)
                        for a in chosen])
        kept = {a: shadow.get(a) or dict(metrics=None, scraped_at=None, error=None,
                                          inflight=0, sent=0, missed=0) for a in chosen}
        shadow.clear()
        shadow.update(kept)

    set_pods()
    now = 0.0
    previous = {}
    for _ in range(3000):
        now += rng.choice([0.0, 0.01, 0.1, 0.5, 1.5]) if rng.random() < 0.97 else -1.0
        a = rng.choice(addresses)
        op = rng.random()
        touched = {a}
        if op < 0.02:
            set_pods()
            touched = set(addresses)
        elif a in shadow:
            s = shadow[a]
            if op < 0.3:
                m = PodMetrics(waiting=float(rng.randint(0, 5)), kv_usage=rng.random(),
                               models=(rng.choice(["m1", "m2"]),))
                store.update(a, m, now)
                s.update(metrics=m, scraped_at=now, error=None, sent=0, missed=0)
            elif op < 0.4:
                error = rng.choice(["timeout", "timeout", "connect_error"])
                out = store.mark_error(a, error, now)
                s["missed"] += 1
                # one timeout right after a good scrape is forgiven
                forgiven = error == "timeout" and s["missed"] == 1 and s["metrics"] is not None
                assert out is not forgiven
                if not forgiven:
                    s["error"] = error
            elif op < 0.7:
                store.acquire(a)
                s["inflight"] += 1
                s["sent"] += 1
            else:
                store.release(a)
                s["inflight"] = max(0, s["inflight"] - 1)
        snap = store.snapshot(now)
        assert [p.address for p in snap.pods] == list(shadow)
        for st in snap.pods:
            s = shadow[st.address]
            fresh = (s["metrics"] is not None and s["error"] is None
                     and now - s["scraped_at"] <= 2.0)
            assert (st.metrics, st.scraped_at, st.last_error, st.inflight,
                    st.sent_since_scrape, st.fresh) == (s["metrics"], s["scraped_at"],
                                                        s["error"], s["inflight"], s["sent"],
                                                        fresh)
            # fresh: waiting + sent since the scrape, but at least what is in flight beyond
            # what the page says is running
            assert st.queue == (max(s["metrics"].waiting + s["sent"],
                                    s["inflight"] - s["metrics"].running)
                                if fresh else s["inflight"])
            before = previous.get(st.address)
            if st.address not in touched and before is not None and before.fresh == st.fresh:
                assert before is st  # pods nothing happened to are the same objects
        for pool in ("pool-a", "pool-b"):
            assert snap.in_pool(pool) == tuple(p for p in snap.pods if p.pod.pool == pool)
        previous = {p.address: p for p in snap.pods}
