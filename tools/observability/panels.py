"""Grafana dashboard JSON: panels, a grid layout, template variables, the dashboard."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]
DATASOURCE: JSON = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24
QUANTILE_COLORS = {"p50": "green", "p95": "orange", "p99": "red"}


def target(
    expr: str, legend: str = "__auto", *, instant: bool = False, table: bool = False
) -> JSON:
    query: JSON = {"expr": expr, "legendFormat": legend}
    if table:
        query["format"] = "table"
    if instant:
        query |= {"instant": True, "range": False}
    return query


def _panel(kind: str, title: str, description: str, targets: list[JSON]) -> JSON:
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets,
    }


def timeseries(
    title: str,
    description: str,
    targets: list[JSON],
    *,
    unit: str = "short",
    slo: float | None = None,
    max_value: float | None = None,
    stack: bool = False,
) -> JSON:
    """A time series panel; `slo` draws a red threshold line at that value."""
    custom: JSON = {"fillOpacity": 20 if stack else 5, "lineWidth": 1, "showPoints": "never"}
    if stack:
        custom["stacking"] = {"group": "A", "mode": "normal"}
    defaults: JSON = {
        "color": {"mode": "palette-classic"},
        "custom": custom,
        "unit": unit,
        "min": 0,
    }
    if max_value is not None:
        defaults["max"] = max_value
    if slo is not None:
        custom["thresholdsStyle"] = {"mode": "line+area"}
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": "transparent", "value": None}, {"color": "red", "value": slo}],
        }
    panel = _panel("timeseries", title, description, targets)
    panel["fieldConfig"] = {"defaults": defaults, "overrides": []}
    panel["options"] = {
        "legend": {"calcs": ["mean", "max", "lastNotNull"], "displayMode": "table",
                   "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }  # fmt: skip
    return panel


def stat(
    title: str, description: str, expr: str, *, unit: str = "short", red_below: float | None = None
) -> JSON:
    """The latest value; `red_below` colours it red under that value (green otherwise)."""
    steps: list[JSON] = [{"color": "blue", "value": None}]
    if red_below is not None:
        steps = [{"color": "red", "value": None}, {"color": "green", "value": red_below}]
    panel = _panel("stat", title, description, [target(expr)])
    panel["fieldConfig"] = {
        "defaults": {"color": {"mode": "thresholds"}, "unit": unit,
                     "thresholds": {"mode": "absolute", "steps": steps}},
        "overrides": [],
    }  # fmt: skip
    panel["options"] = {
        "colorMode": "value",
        "graphMode": "area",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": "value",
    }
    return panel


def info_table(title: str, description: str, expr: str, columns: list[str]) -> JSON:
    """The labels of an info series, one row per series."""
    panel = _panel("table", title, description, [target(expr, instant=True, table=True)])
    panel["transformations"] = [
        {"id": "filterFieldsByName", "options": {"include": {"names": [*columns, "Value"]}}},
        {"id": "organize", "options": {"indexByName": {c: i for i, c in enumerate(columns)}}},
    ]
    panel["fieldConfig"] = {"defaults": {}, "overrides": []}
    panel["options"] = {"showHeader": True, "cellHeight": "sm"}
    return panel


def quantile_targets(expr_for: dict[str, str], by_legend: str) -> list[JSON]:
    """One target per quantile name ("p50" -> expr), legends like "p95 {{arch}}"."""
    return [target(expr, f"{name} {by_legend}") for name, expr in expr_for.items()]


@dataclass
class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping into new rows."""

    panels: list[JSON] = field(default_factory=list)
    x: int = 0
    y: int = 0
    row_height: int = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {"type": "row", "title": title, "collapsed": False, "panels": [],
             "gridPos": {"x": 0, "y": self.y, "w": GRID_WIDTH, "h": 1}}
        )  # fmt: skip
        self.y += 1

    def add(self, panel: JSON, width: int, height: int = 8) -> None:
        if self.x + width > GRID_WIDTH:
            self._newline()
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": width, "h": height}
        self.panels.append(panel)
        self.x += width
        self.row_height = max(self.row_height, height)

    def _newline(self) -> None:
        self.y += self.row_height
        self.x, self.row_height = 0, 0

    def numbered(self) -> list[JSON]:
        for i, panel in enumerate(self.panels, start=1):
            panel["id"] = i
        return self.panels


def datasource_variable() -> JSON:
    return {"name": "datasource", "label": "Data source", "type": "datasource",
            "query": "prometheus", "current": {}, "hide": 0, "refresh": 1}  # fmt: skip


def query_variable(name: str, label: str, metric: str, label_name: str, scope: str = "") -> JSON:
    """A multi-select variable of `label_name`'s values on `metric`; "All" matches any value,
    the empty one included (locally, series carry no namespace or deployment label)."""
    series = f"{metric}{{{scope}}}" if scope else metric
    query = f"label_values({series}, {label_name})"
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": "All", "value": "$__all"},
        "refresh": 2,
        "sort": 1,
        "hide": 0,
    }


def dashboard(
    uid: str, title: str, description: str, layout: Layout, variables: list[JSON]
) -> JSON:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["qwen35-stack"],
        "editable": False,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "timezone": "browser",
        "graphTooltip": 1,
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": [datasource_variable(), *variables]},
        "panels": layout.numbered(),
    }


def queries(board: JSON) -> Iterator[str]:
    """Every PromQL expression of a board: panel targets (in rows too) and variable queries."""
    for panel in board["panels"]:
        for p in (panel, *panel.get("panels", [])):
            yield from (t["expr"] for t in p.get("targets", []))
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":  # label_values(<series>, <label>): the series
            yield variable["definition"].removeprefix("label_values(").rsplit(",", 1)[0]
