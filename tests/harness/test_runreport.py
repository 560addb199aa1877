"""The live-run report from a synthetic run: the summary and the four comparison panels over
time, computed from the client's outcomes and the pods' samples, in one self-contained HTML
page that Chromium draws with data on both sides of every panel."""

from __future__ import annotations

import math
import re
from pathlib import Path

from llmtraffic.contracts.store import Histogram, PodMetrics
from llmtraffic.harness.loadclient import Outcome
from llmtraffic.harness.routing import RoutingRun
from llmtraffic.harness.runreport import LiveRun, headline, write_run_report
from llmtraffic.harness.timeline import run_panels, window_width
from tests.fixtures.browser import check_panels

SCALE = 2.0


def _outcomes(slow: float) -> list[Outcome]:
    """A request every wall second for 20 s, `slow`× the TTFT in the second half."""
    out = []
    for i in range(20):
        ttft = 0.1 * (slow if i >= 10 else 1.0)
        out.append(Outcome(i, "m", status=200, start=100.0 + i, ttft=ttft, e2e=ttft + 0.9,
                           tokens=10, gaps=[0.1] * 9))
    return out


def _samples(queue: float) -> list:
    samples = []
    for t in range(22):
        hist = Histogram((1.0, math.inf), (t, t), sum=queue * t, count=t)
        samples.append((100.0 + t, [PodMetrics(kv_usage=0.1 * (t % 5), queue_time=hist),
                                    PodMetrics(kv_usage=0.3, queue_time=hist)]))
    return samples


def _live() -> LiveRun:
    figures = {"ttft_p50_s": 0.2, "ttft_p90_s": 0.4, "ttft_p99_s": 0.5, "e2e_p90_s": 2.0,
               "queue_time_mean_s": 0.01, "throughput_tok_s": 100.0, "completed": 20,
               "shed": 0, "failed": 0}
    rr = {**figures, "ttft_p90_s": 4.0, "ttft_p99_s": 6.0, "queue_time_mean_s": 1.5}
    run = RoutingRun("seed-lora", 0.9, 2, 40.0, 1, 1.0, 0.9,
                     {"llm": figures, "round-robin": rr}, {})
    return LiveRun(run, {"llm": _outcomes(1.0), "round-robin": _outcomes(10.0)},
                   {"llm": _samples(0.01), "round-robin": _samples(0.5)}, 100.0,
                   1_700_000_000.0, 1_700_000_030.0, SCALE)


def test_the_panels_follow_the_run() -> None:
    live = _live()
    kv, queue, ttft, tokens = run_panels(live.outcomes, live.samples, live.origin, SCALE)
    assert [s.label for s in kv.sides["llm"]] == ["pod 0", "pod 1"] and kv.ymax == 1.0
    assert kv.sides["llm"][1].ys[0] == 0.3 and kv.sides["llm"][0].xs[1] == 2.0  # simulated s
    assert queue.sides["round-robin"][0].ys[0] == 0.5 * SCALE  # mean queue time, simulated
    p50, p90 = ttft.sides["round-robin"]
    assert p50.ys[0] == 0.2 and p90.ys[-1] == 2.0  # 0.1 s and 1 s wall, x2
    # 10 tokens per request, one request every 2 simulated s: 5 tokens/s while it runs
    assert tokens.sides["llm"][0].ys[5] == 5.0


def test_window_widths_are_round() -> None:
    assert [window_width(s) for s in (10, 45, 120, 600, 3000)] == [1, 2, 5, 20, 100]


def test_the_report_is_one_page_with_every_panel_drawn(tmp_path: Path) -> None:
    written = write_run_report(tmp_path, _live(), intro="two pods")
    page = tmp_path / "report.html"
    assert written[:2] == [page, tmp_path / "comparison.png"]
    text = page.read_text()
    assert not re.search(r"""(src|href)=["'](?!data:)""", text)  # nothing fetched
    assert headline(_live().run) in text and "10.0x lower" in text
    assert "times in simulated seconds" in text and "Prometheus did not run" in text
    check_panels(page, tmp_path / "shot.png",
                 ["summary", "run-kv", "run-queue", "run-ttft", "run-tokens"])
