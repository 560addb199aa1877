"""Every query of every generated dashboard, listed: the panels' targets, the variables'
label_values queries, and each target ready to run against a real Prometheus."""

from __future__ import annotations

from llmtraffic.dashboards.build import dashboards
from llmtraffic.dashboards.queries import is_legacy_only, substitute


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, raw expr) for every query target of every dashboard."""
    out: list[tuple[str, str, str]] = []
    for model in dashboards().values():
        for panel in model["panels"]:
            for target in panel.get("targets") or []:
                out.append((model["uid"], panel["title"], target["expr"]))
    return out


def variable_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, variable name, label_values query) for every query variable."""
    return [(model["uid"], var["name"], var["query"])
            for model in dashboards().values()
            for var in model["templating"]["list"] if var["type"] == "query"]


def all_queries(*, include_legacy_only: bool = False, rate_interval: str = "1m",
                range_: str = "5m") -> list[tuple[str, str]]:
    """(“dashboard uid / panel title”, runnable expr) for every dashboard query, variables
    replaced by `.*` (see `queries.substitute`). Queries that only legacy vLLM engines
    answer are left out unless `include_legacy_only`."""
    out: list[tuple[str, str]] = []
    for uid, title, expr in dashboard_targets():
        if not include_legacy_only and is_legacy_only(expr):
            continue
        out.append((f"{uid} / {title}",
                    substitute(expr, rate_interval=rate_interval, range_=range_)))
    return out
