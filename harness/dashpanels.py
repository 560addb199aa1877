"""The comparison dashboard's panels drawn from a Prometheus after a run: each panel's own
PromQL (the JSON Grafana imports), its variables set to the run's two pools, asked over the
run's time range, and split into one side per policy as `charts.Panel`s."""

from __future__ import annotations

import re
from typing import Any

from llmtraffic.dashboards import comparison
from llmtraffic.dashboards.queries import substitute
from llmtraffic.harness.charts import Panel, Series
from llmtraffic.harness.prometheus import PrometheusAPI

XLABEL = "time since the load began (s, wall clock)"

#: (panel title in the comparison dashboard, y label, y max): the seed dashboard's four.
PANELS = (
    ("KV-cache usage (mean / max): A vs B", "KV-cache use (0-1)", 1.0),
    ("Queue time (mean): A vs B", "queue time, mean (s, wall clock)", None),
    ("TTFT by policy", "TTFT at the balancer (s, wall clock)", None),
    ("Completion tokens/s by policy", "completion tokens/s (wall clock)", None),
)


def panel_targets(title: str) -> list[dict[str, Any]]:
    """The targets (`expr`, `legendFormat`) of the comparison dashboard's panel `title`."""
    for panel in comparison.build()["panels"]:
        if panel["title"] == title:
            return list(panel.get("targets") or [])
    raise KeyError(f"the comparison dashboard has no panel {title!r}")


def _legend(fmt: str, labels: dict[str, str]) -> str:
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)
    return re.sub(r"^[AB] ", "", text).strip() or "value"


def dashboard_panels(prom: PrometheusAPI, pools: dict[str, str], start: float, end: float,
                     rate_interval: str = "10s") -> list[Panel]:
    """`pools` maps each policy (lb_policy) to its pool, the first being the dashboard's
    pool A; `start`/`end` are unix seconds."""
    pool_a, pool_b = list(pools.values())[:2]
    side_of = {**{p: s for s, p in pools.items()}, **{s: s for s in pools}}
    step = max(1.0, (end - start) / 120)
    out = []
    for title, ylabel, ymax in PANELS:
        targets = panel_targets(title)
        panel = Panel(f"{title.replace(': A vs B', '')} (dashboard query)", ylabel, XLABEL,
                      {s: [] for s in pools}, ymax,
                      caption=f"The comparison dashboard's panel \"{title}\"; its first "
                      f"query: {targets[0]['expr']}")
        for target in targets:
            expr = substitute(target["expr"].replace("$pool_a", pool_a)
                              .replace("$pool_b", pool_b), rate_interval=rate_interval)
            for series in prom.query_range(expr, start, end, step):
                labels = series["metric"]
                side = side_of.get(labels.get("lb_policy", "")) or \
                    side_of.get(labels.get("pool", ""))
                if side is None:
                    continue
                points = [(float(t) - start, float(v)) for t, v in series["values"]
                          if v not in ("NaN", "+Inf", "-Inf")]
                panel.sides[side].append(Series(_legend(target.get("legendFormat", ""),
                                                        labels),
                                                [x for x, _ in points], [y for _, y in points]))
        out.append(panel)
    return out
