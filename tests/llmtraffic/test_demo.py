"""`llmtraffic demo --quick` end to end, and the proof that the dashboards and rules work on
the real thing: while the demo serves, a real Prometheus (Debian's package) scrapes the
simulated vLLM pods (V1 and legacy names), both balancers and the exporter through
prometheus/scrape.yml's relabel rules, with the recording and alert rules loaded; every
dashboard query, dashboard variable and recording rule must return at least one series.

No Kubernetes API server can run here, so the demo describes its loopback processes to
Prometheus by file discovery with the labels Kubernetes pod discovery would give them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmtraffic.dashboards import rules
from llmtraffic.dashboards.targets import all_queries
from llmtraffic.contracts import series as m
from llmtraffic.harness.prometheus import PrometheusAPI
from tests.fixtures.browser import check_panels
from tests.prometheus.test_scrape_dashboards_live import (assert_variables_answer,
                                                         run_until_all_answer)

pytestmark = pytest.mark.e2e

PANELS = ("kv", "queue", "ttft", "tokens")  # KV cache, queue time, TTFT, token throughput


def _read_until(proc: subprocess.Popen, pattern: str, timeout: float) -> tuple[str, str]:
    """Stdout so far and the first match of `pattern` (fails with the output on timeout)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return "".join(seen), found.group(1)
    pytest.fail(f"demo never printed {pattern!r}; output:\n{''.join(seen)}")


@pytest.mark.timeout(420)
def test_demo_quick_serves_prometheus_with_every_dashboard_query_answering(
        tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.Popen(  # a relative --out, as a newcomer would give
        [sys.executable, "-m", "llmtraffic", "demo", "--quick", "--serve", "--out", "demo"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        text, url = _read_until(proc, r"Prometheus: (http://\S+)", timeout=300)
        prom = PrometheusAPI(url)

        # the comparison table, no wider than 100 columns, and the exporter's token counts
        assert re.search(r"^lb_policy\s+llm\s+round-robin$", text, re.M)
        assert re.search(r"^TTFT p90 \(s\)\s+\d+\.\d+\s+\d+\.\d+$", text, re.M)
        table = text[text.index("lb_policy "):text.index("tokens by model")]
        assert max(len(line) for line in table.splitlines()) <= 100
        # the report: the four comparison panels from the run and from the dashboards'
        # own queries, drawn with data for both policies in a real browser
        check_panels(out / "report.html", tmp_path / "report.png",
                     [f"{src}-{k}" for src in ("run", "grafana") for k in PANELS])
        results = json.loads((out / "results.json").read_text())
        for policy in ("llm", "round-robin"):
            r = results["policies"][policy]
            assert r["completed"] > 0 and r["failed"] == 0, (policy, r)
        # the exporter counted, from the two access logs, exactly the tokens the balancers
        # relayed (the client asked for exactly output_len tokens per request)
        by_policy: dict[str, float] = {}
        for row in results["exporter_tokens"]:
            by_policy[row["lb_policy"]] = by_policy.get(row["lb_policy"], 0) + \
                row["completion_tokens"]
        assert by_policy["llm"] == by_policy["round-robin"] > 0
        assert (out / "comparison.png").stat().st_size > 10_000
        assert sorted(p.name for p in (out / "panels").iterdir()) == sorted(
            f"{src}-{k}.png" for src in ("run", "grafana") for k in PANELS)
        assert sorted(p.name for p in (out / "dashboards").iterdir()) == [
            "llmtraffic-comparison.json", "llmtraffic-overview.json"]

        # every dashboard query (legacy-only ones too: pool B speaks V0 names) answers
        exprs = all_queries(include_legacy_only=True, rate_interval="10s",
                            range_="60s")
        empty = run_until_all_answer(prom, exprs, attempts=30)
        assert not empty, f"dashboard queries without data: {empty}"
        assert_variables_answer(prom)
        records = sorted({r["record"] for g in rules.recording_groups() for r in g["rules"]})
        empty = run_until_all_answer(prom, [(n, n) for n in records], attempts=30)
        assert not empty, f"recording rules without data: {empty}"
        # balancer series carry both policies; pod gauges both pools
        policies = {s["metric"]["lb_policy"] for s in prom.query(
            f"sum by (lb_policy) ({m.BALANCER_REQUESTS.name}_total)")}
        assert policies == {"llm", "round-robin"}
        pools = {s["metric"]["pool"] for s in prom.query(f"{m.POD_UP.name} == 1")}
        assert pools == {"vllm-llama2-7b-pool", "vllm-llama2-7b-pool-rr"}
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C stops everything cleanly
        try:
            rest, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode in (0, 130), rest
    # one enriched line per request (flushed by the exporter at the latest when it stops)
    lines = (out / "enriched.log").read_text().splitlines()
    assert len(lines) == sum(r["completed"] for r in results["policies"].values())
    first = json.loads(lines[0])
    assert first["model"] and first["pod"] and first["lb_policy"] in ("llm", "round-robin")
    assert "stopping" in rest
    ports = {int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)", text)}
    assert len(ports) >= 10  # 6 pods, 2 balancers, the exporter, Prometheus
    still_up = [p for p in ports if _listening(p)]
    assert not still_up, f"demo left processes listening on {still_up}"


@pytest.mark.timeout(420)
def test_demo_without_prometheus_serves_until_ctrl_c_and_writes_the_report(
        tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a PATH with no prometheus on it
    bin_dir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmtraffic", "demo", "--quick", "--serve", "--out", "demo"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PATH": str(bin_dir)})
    try:
        text, _ = _read_until(proc, r"(serving until Ctrl-C)", timeout=300)
        assert "prometheus   not started (not on the PATH)" in text
        out = tmp_path / "demo"
        check_panels(out / "report.html", tmp_path / "report.png",
                     [f"run-{k}" for k in PANELS])
        page = (out / "report.html").read_text()
        assert "Prometheus did not run" in page and "grafana-" not in page
        assert proc.poll() is None  # still serving
        ports = {int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)", text)}
        assert len(ports) >= 9 and all(_listening(p) for p in ports)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 130 and rest.strip().endswith("stopping"), rest
    assert not [p for p in ports if _listening(p)]


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
