"""Smoke test of bench.soak's pieces (the soak itself runs for minutes and is not run here):
/proc sampling, the growth figures and the report."""

import os

from bench.soak import Sample, Series, growth_pct, open_fds, report, rss_mb


def test_proc_sampling_of_this_process():
    assert rss_mb(os.getpid()) > 1
    n = open_fds(os.getpid())
    with open(__file__):
        assert open_fds(os.getpid()) == n + 1
    assert rss_mb(2**22 + 12345) == 0.0 and open_fds(2**22 + 12345) == -1


def test_growth_is_measured_from_the_end_of_warm_up():
    s = Series("balancer", [Sample(0, 40, 10), Sample(30, 50, 90), Sample(60, 52, 80),
                            Sample(90, 55, 95)])
    r = s.summary(warmup_s=30)
    assert (r["rss_start_mb"], r["rss_after_warmup_mb"], r["rss_end_mb"], r["rss_peak_mb"]) \
        == (40, 50, 55, 55)
    assert r["rss_growth_pct"] == growth_pct(50, 55) == 10.0
    assert (r["fds_after_warmup"], r["fds_end"], r["fds_peak"], r["fds_min_after_warmup"]) \
        == (90, 95, 95, 80)
    text = report({"workload": "seed-lora", "minutes": 1, "load": 0.9, "rate_rps": 5.4,
                   "capacity_rps": 6.0, "pods": 4, "time_scale": 1, "elapsed_s": 70,
                   "warmup_s": 30, "requests": 10, "ok": 10, "failed": 0, "errors": [],
                   "balancer_completion_tokens": 5.0, "exporter_completion_tokens": 5.0,
                   "balancer_cpu_s": 1, "exporter_cpu_s": 1, "pods_cpu_s": 1,
                   "inflight_after_warmup": 20.0, "inflight_end_of_arrivals": 60.0,
                   "inflight_peak": 61.0, "finished_rps": 4.0,
                   "processes": {"balancer": r}})
    assert "10 ok, 0 failed" in text and "(equal)" in text
    assert "20 after warm-up, 60 when arrivals ended" in text and "fell behind" in text
    assert "goal: balancer RSS growth after warm-up < 10%: missed (+10.0%)" in text
