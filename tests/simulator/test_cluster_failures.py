"""Shed and unfinished requests are counted and, in the `*_failed_s` percentiles, count as
failures (TTFT inf): a policy cannot improve its figures by refusing or abandoning work."""

from __future__ import annotations

import math

from llmtraffic.simulator.cluster import Cluster, ClusterConfig, quantile_with_failures
from llmtraffic.simulator.engine import SimRequest


def test_quantile_with_failures_puts_failures_in_the_tail():
    served = [k / 10 for k in range(1, 11)]  # 0.1 .. 1.0
    assert quantile_with_failures(served, 0, 0.9) == 0.9
    # 10 served + 1 failure: the 90th percentile of 11 is the 10th value
    assert quantile_with_failures(served, 1, 0.9) == 1.0
    # 10 served + 2 failures: rank ceil(0.9 * 12) = 11 > 10 served, so inf
    assert quantile_with_failures(served, 2, 0.9) == math.inf
    assert quantile_with_failures(served, 2, 0.5) == 0.6
    assert quantile_with_failures([], 3, 0.5) == math.inf
    assert math.isnan(quantile_with_failures([], 0, 0.5))


def _sim(rid: str, ttft: float | None, done: bool) -> SimRequest:
    s = SimRequest(request_id=rid, prompt_ids=[1, 2, 3], max_tokens=4, arrival=1.0)
    if ttft is not None:
        s.first_token = 1.0 + ttft
        s.token_times = [s.first_token]
    if done:
        s.finished_at, s.finish_reason = 2.0 + (ttft or 0), "stop"
    return s


def test_report_counts_served_shed_unfinished_and_failed_percentiles():
    cluster = Cluster(ClusterConfig(pods=1), lambda r: None)  # type: ignore[arg-type,return-value]
    sims = [_sim(str(k), 0.1 * k, True) for k in range(1, 9)]  # 8 served: 0.1 .. 0.8
    sims.append(_sim("late", 5.0, False))  # a first token, never finished: unfinished
    sims.append(_sim("never", None, False))  # still queued at the end: unfinished
    report = cluster._report(sims, 10.0, shed=2, kv_samples=[], picks={cluster.addresses[0]: 10})
    front = cluster.profile.frontend_s
    assert (report.completed, report.shed, report.failed) == (8, 2, 2)
    assert math.isclose(report.ttft_p50_s, 0.4 + front)  # over the 8 served
    assert math.isclose(report.ttft_p90_s, 0.8 + front)
    # 12 requests, 4 failures: p50 is the 6th (0.6), p90 the 11th (a failure)
    assert math.isclose(report.ttft_p50_failed_s, 0.6 + front)
    assert report.ttft_p90_failed_s == math.inf and report.ttft_p99_failed_s == math.inf
    d = report.as_dict()
    assert {"ttft_p50_failed_s", "ttft_p90_failed_s", "ttft_p99_failed_s"} <= set(d)


def test_a_shedding_policy_is_not_better_off():
    cluster = Cluster(ClusterConfig(pods=1), lambda r: None)  # type: ignore[arg-type,return-value]
    fast = [_sim(str(k), 0.1, True) for k in range(5)]
    slow = [_sim(f"s{k}", 3.0, True) for k in range(5)]
    serves_all = cluster._report(fast + slow, 10.0, 0, [], {cluster.addresses[0]: 10})
    sheds_slow = cluster._report(fast, 10.0, 5, [], {cluster.addresses[0]: 5})
    assert sheds_slow.ttft_p90_s < serves_all.ttft_p90_s  # over served only: it looks better
    assert sheds_slow.ttft_p90_failed_s > serves_all.ttft_p90_failed_s  # counted: it is not
