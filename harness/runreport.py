"""The report of a live comparison run (the demo's `report.html`, beside its PNGs): the
headline, the summary bars, the four comparison panels over time from the run itself and,
when a Prometheus scraped the run, the same panels from the dashboards' own PromQL; then
the table and what was written."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from llmtraffic.harness.charts import Panel, panel_chart, summary_chart
from llmtraffic.harness.dashpanels import dashboard_panels
from llmtraffic.harness.loadclient import Outcome
from llmtraffic.harness.prometheus import PrometheusAPI
from llmtraffic.harness.report import Figure, Section, write_report
from llmtraffic.harness.routing import RoutingRun
from llmtraffic.harness.table import format_table
from llmtraffic.harness.timeline import Samples, run_panels

KEYS = ("kv", "queue", "ttft", "tokens")  # the panels' order in run_panels and PANELS


@dataclass
class LiveRun:
    """What a live comparison leaves behind besides its figures."""

    run: RoutingRun
    outcomes: dict[str, Sequence[Outcome]]
    samples: dict[str, Samples]
    origin: float  # event-loop time the load began
    started: float  # unix time the load began
    ended: float  # unix time the last request finished
    time_scale: float
    pools: dict[str, str] = field(default_factory=dict)  # policy -> pool


def headline(run: RoutingRun, better: str = "llm", than: str = "round-robin") -> str:
    """`llm` against `round-robin` on TTFT p90, in simulated seconds ('' without both)."""
    a, b = run.policies.get(better), run.policies.get(than)
    if not a or not b or not a["ttft_p90_s"] > 0 or math.isnan(b["ttft_p90_s"]):
        return ""
    return (f"LLM-aware TTFT p90 {a['ttft_p90_s']:.2f} s vs {than} {b['ttft_p90_s']:.2f} s "
            f"(simulated): {b['ttft_p90_s'] / a['ttft_p90_s']:.1f}x lower")


def _figures(panels: list[Panel], folder: Path, prefix: str) -> list[Figure]:
    out = []
    for key, panel in zip(KEYS, panels):
        path = folder / f"{prefix}-{key}.png"
        panel_chart(panel, str(path))
        out.append(Figure(f"{prefix}-{key}", path, panel.caption or panel.title))
    return out


def write_run_report(out: Path, live: LiveRun, *, prom: PrometheusAPI | None = None,
                     rate_interval: str = "10s", intro: str = "", notes: Sequence[str] = (),
                     extra: str = "") -> list[Path]:
    """comparison.png, panels/*.png and report.html under `out`; returns them."""
    run = live.run
    summary = out / "comparison.png"
    summary_chart([run], str(summary))
    folder = out / "panels"
    folder.mkdir(parents=True, exist_ok=True)
    ours = _figures(run_panels(live.outcomes, live.samples, live.origin, live.time_scale),
                    folder, "run")
    sections = [
        Section("Summary", [intro] if intro else [],
                [Figure("summary", summary, "TTFT p50 / p90 / p99 and mean queue time per "
                        "policy, simulated seconds; lower is better")]),
        Section("Over time, from the run", [
            "As the comparison dashboard shows it, from the load client (TTFT by arrival, "
            "output tokens) and each pod's /metrics sampled every second (KV cache, queue "
            "time). Both policies on one y scale; simulated seconds."], ours),
    ]
    grafana = Section("Over time, as your Grafana shows it")
    if prom is not None:
        panels = dashboard_panels(prom, live.pools, live.started, live.ended,
                                  rate_interval=rate_interval)
        grafana.figures = _figures(panels, folder, "grafana")
        grafana.paragraphs.append(
            "The comparison dashboard's own PromQL (dashboards/llmtraffic-comparison.json), "
            f"asked of this run's Prometheus with rate windows of {rate_interval}. Wall-clock "
            f"seconds: the simulated pods run {live.time_scale:g}x faster than simulated "
            "time, so these times are that much shorter than the ones above.")
    else:
        grafana.paragraphs.append(
            "Prometheus did not run: with `prometheus` on the PATH (Debian: apt-get install "
            "prometheus) these panels are drawn from the dashboards' own PromQL.")
    sections += [grafana, Section("Figures", list(notes), pre=format_table(
        run, name="lb_policy") + ("\n\n" + extra if extra else ""))]
    page = write_report(out / "report.html", "llmtraffic demo: LLM-aware vs round-robin",
                        headline(run), sections)
    return [page, summary, *(f.path for s in sections[1:] for f in s.figures)]
