"""Asking a real Prometheus what a board shows: its HTTP API, and the board's Grafana variables
filled in the way Grafana fills them ("All" for every template variable)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from observability.panels import JSON

# "All" of a multi-select variable is `.*` (panels.query_variable), which also matches series
# without the label (locally nothing carries namespace or qwen35_deployment).
ALL = ".*"
VARIABLES = ("namespace", "deployment", "model", "arch", "backend")


def grafana(expr: str, rate_interval: str) -> str:
    """`expr` as Grafana sends it with every variable on "All" and `$__rate_interval` set."""
    expr = expr.replace("$__rate_interval", rate_interval)
    for name in VARIABLES:
        expr = expr.replace(f"${name}", ALL)
    return expr


def get(base: str, path: str, params: dict[str, str] | None = None) -> JSON:
    """Prometheus' JSON answer to GET `path` (an error answer too)."""
    url = f"{base}{path}?" + urllib.parse.urlencode(params or {})
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return dict(json.load(response))
    except urllib.error.HTTPError as exc:  # a bad query: 4xx with Prometheus' error as JSON
        return dict(json.load(exc))


def query(base: str, expr: str) -> JSON:
    """An instant query: Prometheus' whole answer (`status`, `data` or `error`)."""
    return get(base, "/api/v1/query", {"query": expr})


def query_range(base: str, expr: str, start: float, end: float, step: float) -> JSON:
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    return get(base, "/api/v1/query_range", params)


@dataclass(frozen=True)
class PanelQuery:
    board: str
    panel: str
    expr: str  # as the board has it (with Grafana's variables)
    legend: str


def panel_queries(board_name: str, board: JSON) -> Iterator[PanelQuery]:
    """Every target of every panel of `board` (rows included), with the panel's title."""
    for panel in board["panels"]:
        for p in (panel, *panel.get("panels", [])):
            for t in p.get("targets", []):
                yield PanelQuery(board_name, p["title"], t["expr"], t.get("legendFormat", ""))


def evaluate(base: str, expr: str) -> tuple[str | None, list[Any]]:
    """(Prometheus' error or None, the result vector) of an instant query."""
    answer = query(base, expr)
    if answer.get("status") != "success":
        return str(answer.get("error", answer)), []
    return None, list(answer["data"]["result"])
