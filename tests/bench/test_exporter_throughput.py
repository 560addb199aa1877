"""Smoke test of bench.exporter_throughput: tiny run, exact counts, sane figures (never
timings)."""

import math
import shutil

import orjson

from bench.exporter_throughput import generate, report, run


def test_generated_lines_are_istio_json_with_llm_fields(tmp_path):
    log = tmp_path / "access.log"
    totals = generate(str(log), 200, seed=1)
    lines = log.read_bytes().splitlines()
    assert len(lines) == totals.lines == 200
    assert sum(len(ln) + 1 for ln in lines) == totals.bytes
    first = orjson.loads(lines[0])
    assert {"start_time", "response_code", "request_id", "upstream_cluster", "request_model",
            "request_prompt_tokens", "request_completion_tokens"} <= set(first)
    assert isinstance(first["response_code"], str)
    assert sum(totals.requests.values()) == 200
    assert generate(str(tmp_path / "again.log"), 200, seed=1) == totals


def test_tiny_run_counts_exactly_and_reports(tmp_path):
    out = run(lines=5000, block_mb=0.25, directory=str(tmp_path))
    totals = out["totals"]
    assert totals.lines == 5000
    modes = [r.mode for r in out["results"]]
    assert len(modes) == (5 if shutil.which("mtail") else 4)  # mtail only when installed
    assert modes[0].startswith("exporter, tail")
    for r in out["results"]:
        assert r.lines == 5000, r.mode
        assert r.bytes == totals.bytes, r.mode
        assert r.prompt == totals.prompt and r.completion == totals.completion, r.mode
        assert r.requests == totals.requests, r.mode
        ours = not r.mode.startswith("mtail")  # mtail's RSS is its peak alone
        for x in (r.seconds, r.cpu_seconds, r.lines_per_s, r.lines_per_cpu_s, r.rss_peak_mb,
                  *((r.rss_before_mb, r.rss_after_mb) if ours else ())):
            assert math.isfinite(x) and x > 0, r.mode
        assert not ours or r.rss_peak_mb >= r.rss_after_mb - 1
    text = report(out)
    assert "MISMATCH" not in text
    assert "goal: >= 250k lines/s on one core:" in text and "goal: RSS < 100 MB:" in text
    assert ("x mtail" if shutil.which("mtail") else "mtail: not installed") in text
