"""The scrape benchmark (`python -m bench.exporter_scrape`) runs end to end."""

from __future__ import annotations


def test_scrape_benchmark_runs(capsys) -> None:
    """`python -m bench.exporter_scrape` end to end, tiny: it must scrape without errors."""
    from bench.exporter_scrape import main

    assert main(["--pods", "2", "--interval", "0.1", "--seconds", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "errors none" in out and "µs/page" in out and "% of one core" in out
