"""The demo says first which core the llm policy runs: a C build that failed at install
time is said with what to install, not discovered when a balancer starts."""

from __future__ import annotations

from llmtraffic import demo
from llmtraffic.balancer.policy import native


def test_a_missing_native_core_is_said_with_what_to_do(monkeypatch) -> None:
    monkeypatch.setattr(native, "core", None)
    monkeypatch.setattr(native, "missing", "No module named '_native'")
    line = demo.core_line()
    assert line.startswith("llm policy: pure-Python core") and "No module named" in line
    assert "apt-get install gcc python3-dev" in line


def test_a_built_core_is_said_in_one_short_line(monkeypatch) -> None:
    monkeypatch.setattr(native, "core", object())
    assert demo.core_line() == "llm policy: native C core"
