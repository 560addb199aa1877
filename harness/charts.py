"""Pictures of a routing run (matplotlib, PNG): the summary bars with their values (TTFT
p50/p90/p99 and queue time per policy; lower is better) and time-series panels drawn side
by side, one plot per policy on a shared y axis, like the comparison dashboard."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from llmtraffic.harness.routing import RoutingRun

#: (key, label) of the summary bars: the figures where policies differ most.
SUMMARY = (("ttft_p50_s", "TTFT p50"), ("ttft_p90_s", "TTFT p90"), ("ttft_p99_s", "TTFT p99"),
           ("queue_time_mean_s", "queue time\n(mean)"))


@dataclass
class Series:
    """One line: its legend and points."""

    label: str
    xs: list[float]
    ys: list[float]


@dataclass
class Panel:
    """A time-series panel: per side (policy) its lines, drawn side by side."""

    title: str
    ylabel: str
    xlabel: str
    sides: dict[str, list[Series]] = field(default_factory=dict)
    ymax: float | None = None  # e.g. 1 for a ratio
    caption: str = ""  # what it shows, for the report

    def has_data(self) -> bool:
        return any(s.xs for lines in self.sides.values() for s in lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def summary_chart(runs: Sequence[RoutingRun], path: str) -> None:
    """Grouped bars, one column per run, each bar labelled with its value."""
    plt = _pyplot()
    width = max(6.0, 2.0 + 1.2 * len(SUMMARY) * max(len(r.policies) for r in runs) / 2)
    fig, axes = plt.subplots(1, len(runs), figsize=(width * len(runs), 4.6), squeeze=False)
    for ax, run in zip(axes[0], runs):
        names = list(run.policies)
        bar = 0.8 / len(names)
        values = []
        for i, name in enumerate(names):
            ys = [run.policies[name].get(key, math.nan) for key, _ in SUMMARY]
            values += [y for y in ys if y > 0 and math.isfinite(y)]
            xs = [g + (i - (len(names) - 1) / 2) * bar for g in range(len(SUMMARY))]
            bars = ax.bar(xs, [0 if math.isnan(y) else y for y in ys], width=bar * 0.95,
                          label=name)
            ax.bar_label(bars, labels=[_short(y) for y in ys], fontsize=8, padding=2)
        log = bool(values) and max(values) / min(values) > 50
        if log:
            ax.set_yscale("log")
        ax.set_xticks(range(len(SUMMARY)), [label for _, label in SUMMARY])
        ax.set_ylabel("seconds (simulated" + (", log scale)" if log else ")"))
        ax.set_title(f"{run.workload}, {run.pods} pods, load {run.load:.2g}: lower is better",
                     fontsize=11)
        ax.margins(y=0.15)
        ax.legend(fontsize=9)
        thr = ", ".join(f"{n} {run.policies[n].get('throughput_tok_s', math.nan):.0f}"
                        for n in names)
        ax.text(0.0, -0.16, f"output tokens/s (simulated): {thr}", transform=ax.transAxes,
                fontsize=9, va="top")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _short(y: float) -> str:
    if math.isnan(y):
        return "n/a"
    return f"{y:.3f}" if y < 1 else f"{y:.2f}" if y < 10 else f"{y:.1f}"


def panel_chart(panel: Panel, path: str) -> None:
    """The panel's sides next to each other on one y scale, so heights compare."""
    plt = _pyplot()
    sides = list(panel.sides)
    fig, axes = plt.subplots(1, len(sides), figsize=(5.2 * len(sides), 3.4), sharey=True,
                             squeeze=False)
    for ax, side in zip(axes[0], sides):
        for s in panel.sides[side]:
            ax.plot(s.xs, s.ys, label=s.label, linewidth=1.4)
        ax.set_title(side, fontsize=11)
        ax.set_xlabel(panel.xlabel)
        ax.grid(alpha=0.3)
        if len(panel.sides[side]) > 1:
            ax.legend(fontsize=8, loc="upper left")
        if not panel.sides[side] or not any(s.xs for s in panel.sides[side]):
            ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
    axes[0][0].set_ylabel(panel.ylabel)
    axes[0][0].set_ylim(bottom=0, top=panel.ymax)
    fig.suptitle(panel.title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
