"""Panel and variable builders shared by the dashboards: one look for every panel (Prometheus
datasource variable, table legend with mean/max/last, multi tooltip), rows laid out in the
order an SRE reads them, stable panel ids and refIds."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm
from grafana_foundation_sdk.models import units

DATASOURCE_VAR = "datasource"
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${%s}" % DATASOURCE_VAR)
#: Grafana custom unit: the number followed by " tok/s".
TOKENS_PER_SECOND = "suffix: tok/s"
SECONDS = units.Seconds
RATIO = units.PercentUnit
REQUESTS_PER_SECOND = units.RequestsPerSecond
SHORT = units.Short
LEGEND_CALCS = ["mean", "max", "lastNotNull"]


@dataclass(frozen=True, slots=True)
class Target:
    """One PromQL query of a panel and its legend."""
    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False


Panel = timeseries.Panel | stat.Panel | table.Panel


def _queries(panel: Any, targets: list[Target]) -> None:
    for i, t in enumerate(targets):
        query = (prometheus.Dataquery().expr(t.expr).ref_id(chr(ord("A") + i))
                 .legend_format(t.legend or "__auto"))
        if t.instant:
            query = query.instant()
        if t.table:
            query = query.format(pm.PromQueryFormat.TABLE)
        panel.with_target(query)


def timeseries_panel(title: str, description: str, targets: list[Target], unit: str, *,
                     width: int = 8, height: int = 8, min_: float | None = 0,
                     max_: float | None = None) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).datasource(DATASOURCE)
             .unit(unit).span(width).height(height).fill_opacity(10).line_width(1)
             .legend(common.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE)
                     .placement(cm.LegendPlacement.BOTTOM).show_legend(True)
                     .calcs(LEGEND_CALCS))
             .tooltip(common.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI)
                      .sort(cm.SortOrder.DESCENDING)))
    if min_ is not None:
        panel = panel.min(min_)
    if max_ is not None:
        panel = panel.max(max_)
    _queries(panel, targets)
    return panel


def stat_panel(title: str, description: str, targets: list[Target], unit: str, *,
               width: int = 6, height: int = 5) -> stat.Panel:
    panel = (stat.Panel().title(title).description(description).datasource(DATASOURCE)
             .unit(unit).span(width).height(height)
             .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
             .graph_mode(cm.BigValueGraphMode.NONE)
             .text_mode(cm.BigValueTextMode.VALUE_AND_NAME))
    _queries(panel, targets)
    return panel


def table_panel(title: str, description: str, targets: list[Target], *, hide: list[str],
                rename: dict[str, str], width: int = 12, height: int = 8) -> table.Panel:
    """An instant table of label values (e.g. LoRA adapters per pod); `hide` columns are
    removed and `rename` gives the rest readable headers."""
    panel = (table.Panel().title(title).description(description).datasource(DATASOURCE)
             .span(width).height(height)
             .with_transformation(dm.DataTransformerConfig(
                 id_val="organize",
                 options={"excludeByName": {name: True for name in hide},
                          "renameByName": rename, "indexByName": {}})))
    _queries(panel, [Target(t.expr, t.legend, instant=True, table=True) for t in targets])
    return panel


def datasource_variable() -> dashboard.DatasourceVariable:
    return (dashboard.DatasourceVariable(DATASOURCE_VAR).label("Data source")
            .type("prometheus"))


def query_variable(name: str, label: str, query: str, *, multi: bool = True,
                   description: str = "") -> dashboard.QueryVariable:
    """A `label_values(...)` variable; with `multi` it offers "All" meaning regex `.*`."""
    var = (dashboard.QueryVariable(name).label(label).datasource(DATASOURCE).query(query)
           .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
           .sort(dm.VariableSort.ALPHABETICAL_ASC))
    if description:
        var = var.description(description)
    if multi:
        var = var.multi(True).include_all(True).all_value(".*")
    return var


def new_board(title: str, uid: str, description: str, tags: list[str],
              variables: list[Any]) -> dashboard.Dashboard:
    """A dashboard as each of ours starts: editable, the last hour refreshed every 30 s in
    the browser's time zone, a shared crosshair, and `variables` in order."""
    board = (dashboard.Dashboard(title).uid(uid).description(description).tags(tags)
             .editable().refresh("30s").time("now-1h", "now").timezone("browser")
             .tooltip(dm.DashboardCursorSync.CROSSHAIR))
    for var in variables:
        board = board.with_variable(var)
    return board


def assemble(board: dashboard.Dashboard, rows: list[tuple[str, list[Panel]]]) -> dict[str, Any]:
    """Add `rows` (title, panels) to `board` with ids 1, 2, ... in reading order and return
    the dashboard as a plain JSON-able dict."""
    next_id = 1
    for title, panels in rows:
        board = board.with_row(dashboard.Row(title).id(next_id))
        next_id += 1
        for panel in panels:
            board = board.with_panel(panel.id(next_id))
            next_id += 1
    return to_dict(board)


def to_dict(board: dashboard.Dashboard) -> dict[str, Any]:
    return json.loads(JSONEncoder(sort_keys=True).encode(board.build()))
