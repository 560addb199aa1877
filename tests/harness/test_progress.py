"""The progress line follows requests, not the clock: once arrivals are over it says how
many are still running, and the bar is full only when every request is done."""

from __future__ import annotations

import io

from llmtraffic.harness.loadclient import Outcome
from llmtraffic.harness.progress import Progress


def test_the_bar_is_full_only_when_every_request_is_done() -> None:
    p = Progress(4, ["llm", "round-robin"], arrivals_s=60.0, stream=io.StringIO())
    p.t0 -= 61  # past the arrivals, as when the last requests are still being served
    for side in ("llm", "round-robin"):
        for i in range(3):
            p.done(side, Outcome(i, "m", status=200))
    line = p.line()
    assert line.startswith("[" + "#" * 22 + " " * 8 + "]"), line
    assert "arrivals over, 2 still running" in line and "llm: 3/4 done" in line
    p.done("llm", Outcome(3, "m", status=200))
    p.done("round-robin", Outcome(3, "m", status=503))
    line = p.line()
    assert line.startswith("[" + "#" * 30 + "]") and "0 still running" in line
    assert "round-robin: 3/4 done, 1 failed" in line


def test_during_arrivals_it_counts_wall_seconds_against_theirs() -> None:
    p = Progress(10, ["llm"], arrivals_s=60.0, stream=io.StringIO())
    assert "s of 60s of arrivals" in p.line()
