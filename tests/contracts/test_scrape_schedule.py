"""The scrape schedule by counts and order, on a fake clock: scrapes spread over the
interval, the budget respected, each pod once per period, membership followed, the rate
cut when the process falls behind; the scraper counts stale pods."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from llmtraffic.contracts.scrape import ScrapeCounts, Scraper
from llmtraffic.contracts.scrapeschedule import ScrapeSchedule
from llmtraffic.contracts.store import MetricsStore, Pod, PodMetrics


def pods(n: int) -> list[str]:
    return [f"10.0.{i // 250}.{i % 250}:8000" for i in range(n)]


def run(s: ScrapeSchedule, start: float, end: float, step: float = 0.01) -> list[tuple[float, str]]:
    out: list[tuple[float, str]] = []
    for k in range(round((end - start) / step)):
        t = start + k * step
        out += [(t, a) for a in s.due(t)]
    return out


def firsts(done: list[tuple[float, str]]) -> dict[str, float]:
    """When each pod was first scraped."""
    out: dict[str, float] = {}
    for t, a in done:
        out.setdefault(a, t)
    return out


def test_first_scrapes_are_spread_over_the_interval_not_at_once():
    s = ScrapeSchedule(interval=1.0, budget=10_000, seed=1)
    s.set_pods(pods(1000), now=0.0)
    first = firsts(run(s, 0.0, 1.01))
    assert len(first) == 1000
    per_tenth = Counter(min(int(t * 10), 9) for t in first.values())
    assert len(per_tenth) == 10 and min(per_tenth.values()) >= 60, per_tenth


def test_each_pod_once_per_period_in_steady_state():
    s = ScrapeSchedule(interval=0.5, budget=10_000, seed=2)
    s.set_pods(pods(200), now=0.0)
    counts = Counter(a for _, a in run(s, 0.0, 10.0))
    # 20 periods; jitter of 10% moves at most one scrape in or out of the window
    assert set(counts) == set(pods(200))
    assert min(counts.values()) >= 18 and max(counts.values()) <= 21, counts


def test_budget_stretches_the_period_and_is_respected():
    s = ScrapeSchedule(interval=0.1, budget=500, seed=3)
    s.set_pods(pods(5000), now=0.0)
    assert s.period == pytest.approx(10.0)
    done = run(s, 0.0, 30.0)
    assert len(done) <= 500 * 30 * 1.05
    assert len(done) >= 500 * 30 * 0.9
    per_second = Counter(int(t) for t, _ in done)
    assert max(per_second.values()) <= 500 * 1.3, per_second  # no burst


def test_membership_is_followed():
    s = ScrapeSchedule(interval=1.0, budget=10_000, seed=4)
    s.set_pods(pods(10), now=0.0)
    run(s, 0.0, 2.0)
    s.set_pods(pods(5), now=2.0)
    later = {a for _, a in run(s, 2.0, 4.0)}
    assert later == set(pods(5))
    s.set_pods(pods(20), now=4.0)
    assert {a for _, a in run(s, 4.0, 6.0)} == set(pods(20))


def test_falling_behind_cuts_the_rate_and_it_grows_back():
    s = ScrapeSchedule(interval=0.1, budget=2000, seed=5)
    s.set_pods(pods(1000), now=0.0)
    assert s.period == pytest.approx(0.5)
    late = s.due(2.0)  # the process woke 2 s late: every pod is overdue
    assert len(late) == 1000
    assert s.adapt(launched=300, seconds=1.0)
    assert s.rate == pytest.approx(300) and s.period == pytest.approx(1000 / 300)
    for _ in range(30):
        assert not s.adapt(launched=300, seconds=1.0)  # on time again: back to the budget
    assert s.rate == 2000


def test_a_late_wake_up_that_started_every_planned_scrape_cuts_nothing():
    s = ScrapeSchedule(interval=0.25, budget=2500, seed=7)
    s.set_pods(pods(100), now=0.0)  # 400 scrapes a second planned, far below the budget
    assert len(s.due(1.0)) == 100  # woke late: every pod overdue by up to 1 s
    assert not s.adapt(launched=400, seconds=1.0)  # yet the window started all it planned
    assert s.rate == 2500 and s.period == pytest.approx(0.25)
    s.due(3.0)
    assert s.adapt(launched=200, seconds=1.0)  # late and short of the plan: cut
    assert s.rate == pytest.approx(200) and s.period == pytest.approx(0.5)


def test_plan_far_behind_is_spread_again_not_caught_up_in_a_burst():
    s = ScrapeSchedule(interval=1.0, budget=10_000, seed=6)
    s.set_pods(pods(100), now=0.0)
    assert len(s.due(50.0)) == 100
    again = firsts(run(s, 50.01, 51.02))
    assert len(again) == 100 and max(Counter(int(t * 10) for t in again.values()).values()) < 40


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="budget"):
        ScrapeSchedule(interval=1.0, budget=0)
    with pytest.raises(ValueError, match="interval"):
        ScrapeSchedule(interval=0, budget=1)


def test_scraper_reports_stale_pods_and_its_period():
    clock = [100.0]
    store = MetricsStore(stale_after=2.0)
    addresses = pods(4)
    store.set_pods([Pod(f"p{i}", a) for i, a in enumerate(addresses)])
    store.update(addresses[0], PodMetrics(), now=100.0)
    store.update(addresses[1], PodMetrics(), now=90.0)  # stale
    store.mark_error(addresses[2], "connect_error", now=100.0)  # never scraped, failing
    stats = ScrapeCounts()
    scraper = Scraper(store, interval=0.5, budget=4.0, clock=lambda: clock[0], stats=stats)
    scraper.schedule.set_pods(addresses, now=clock[0])
    scraper.review(launched=4, seconds=1.0, now=clock[0])
    assert stats.stale_pods == 3 and stats.scrape_period == pytest.approx(1.0)
    asyncio.run(scraper.close())


def test_stale_after_follows_a_long_plan():
    """At 5,000 pods and 2,500 scrapes a second each pod is scraped every 2 s (with jitter):
    its metrics must not count as stale between two good scrapes."""
    store = MetricsStore(stale_after=2.0)
    store.set_pods([Pod(f"p{i}", a) for i, a in enumerate(pods(5000))])
    scraper = Scraper(store, interval=0.25, budget=2500.0, clock=lambda: 100.0)
    scraper.launch_due(100.0)  # follows membership: the plan is made
    assert scraper.schedule.period == pytest.approx(2.0) and store.stale_after == 4.0
    store.set_pods([Pod(f"p{i}", a) for i, a in enumerate(pods(10))])
    scraper.launch_due(100.0)
    assert store.stale_after == 2.0  # a short plan: the store's own
    asyncio.run(scraper.close())


def test_due_hands_out_at_most_the_limit_and_keeps_the_rest_due():
    s = ScrapeSchedule(interval=1.0, budget=10_000, seed=8)
    s.set_pods(pods(50), now=0.0)
    first = s.due(5.0, limit=20)
    assert len(first) == 20
    rest = s.due(5.0)
    assert len(rest) == 30 and not set(first) & set(rest)


def test_scrapes_in_flight_are_capped_the_rest_wait_in_the_plan():
    """Pods that accept and never answer: no more than MIN_IN_FLIGHT scrapes are started,
    the others stay due (rather than all waiting out their timeout in the loop)."""
    from llmtraffic.contracts.scrape import MIN_IN_FLIGHT

    async def main() -> None:
        held = []
        server = await asyncio.start_server(lambda r, w: held.append(w), "0.0.0.0", 0)
        port = server.sockets[0].getsockname()[1]
        addresses = [f"127.0.{i // 200}.{1 + i % 200}:{port}" for i in range(MIN_IN_FLIGHT + 72)]
        store = MetricsStore()
        store.set_pods([Pod(f"p{i}", a) for i, a in enumerate(addresses)])
        scraper = Scraper(store, interval=1.0, timeout=1.0, budget=100.0)
        started = scraper.launch_due(0.0)
        started += scraper.launch_due(10.0)  # every pod due
        assert len(started) == MIN_IN_FLIGHT
        assert len(scraper.schedule.due(10.0)) == 72  # still planned, not dropped
        await scraper.close()
        server.close()
        for w in held:
            w.close()

    asyncio.run(main())
