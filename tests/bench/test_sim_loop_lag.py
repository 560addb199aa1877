"""Smoke test of bench.sim_loop_lag: tiny run, sane figures (never timings)."""

import math

from bench.sim_loop_lag import percentile, report, run


def test_percentile_nearest_rank():
    xs = [float(i) for i in range(1, 101)]
    assert percentile(xs, 0.5) == 50.0
    assert percentile(xs, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0


def test_tiny_run_reports_sane_figures():
    r = run(pods=1, concurrency=2, duration=2.0, max_tokens=8)
    assert r["pods"] == 1 and r["concurrency"] == 2
    assert r["errors"] == {}
    for key in ("duration_s", "lag_p50_ms", "lag_p99_ms", "lag_max_ms", "tokens_per_s",
                "pod_cpu_pct", "client_cpu_pct"):
        assert math.isfinite(r[key]) and r[key] >= 0, key
    assert r["duration_s"] > 0 and r["tokens_per_s"] > 0 and r["pod_cpu_pct"] > 0
    assert r["lag_samples"] > 0
    assert r["lag_p50_ms"] <= r["lag_p99_ms"] <= r["lag_max_ms"]
    # every completed request streamed exactly max_tokens content chunks (ignore_eos)
    assert r["completed"] > 0
    assert r["usage_tokens"] == r["completed"] * 8 == r["completed_chunks"]
    assert r["tokens"] >= r["completed_chunks"]
    assert "goal: lag p99 < 10 ms:" in report(r)
