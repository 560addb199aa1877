"""`llmtraffic bench live`: a missing vllm-router is said before any measuring, and each
router's run shows its progress (requests done of the total) while it runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llmtraffic.cli import main
from llmtraffic.harness import live


def test_a_missing_vllm_router_is_said_before_anything_runs(tmp_path: Path, monkeypatch,
                                                            capsys) -> None:
    ran: list[str] = []
    monkeypatch.setattr(live, "run_router",
                        lambda spec, *a, **k: ran.append(spec.name) or ({}, 0.0))
    monkeypatch.setattr(live, "measure_capacity", lambda *a, **k: ran.append("capacity") or 1)
    monkeypatch.setenv("PATH", str(tmp_path))  # no vllm-router here
    assert main(["bench", "live", "--routers", "llmtraffic,vllm-router:round_robin",
                 "--duration", "5"]) == 2
    assert ran == []
    err = capsys.readouterr().err
    assert "vllm-router is not installed: pip install vllm-router" in err
    assert err.count("\n") == 1, err


@pytest.mark.timeout(180)
def test_each_router_shows_its_progress(tmp_path: Path, capsys) -> None:
    assert main(["bench", "live", "--routers", "llmtraffic", "--pods", "1",
                 "--duration", "6", "--time-scale", "4", "--workdir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    lines = re.findall(r"\[(#*) *\] .*llmtraffic:llm: (\d+)/(\d+) done", err)
    assert lines, err
    bar, done, total = lines[-1]
    assert done == total and len(bar) == 30  # full once every request is done
