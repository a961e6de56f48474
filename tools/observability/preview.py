"""A PNG preview of a board: each panel drawn with matplotlib from a real Prometheus, placed on
the board's own grid (Grafana itself cannot be installed here). tools/preview_boards.py runs it
against the local stack."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from observability import promapi
from observability.panels import GRID_WIDTH, JSON

Series = list[tuple[dict[str, str], list[tuple[float, float]]]]
RangeFetch = Callable[[str], Series]  # a board expression -> its series over the preview window
InstantFetch = Callable[[str], list[dict[str, Any]]]
UNIT_SCALE = {"s": (1e3, "ms"), "percentunit": (100.0, "%"), "reqps": (1.0, "req/s")}
INCH_PER_UNIT = 0.75  # one grid column; a grid row is 30 px in Grafana, about 0.4 of a column


def legend(template: str, labels: dict[str, str]) -> str:
    if template in ("", "__auto"):
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__")
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip()


def range_fetch(base: str, start: float, end: float, step: float, rate: str) -> RangeFetch:
    def fetch(expr: str) -> Series:
        answer = promapi.query_range(base, promapi.grafana(expr, rate), start, end, step)
        if answer.get("status") != "success":
            raise RuntimeError(f"{expr}: {answer.get('error')}")
        return [
            (r["metric"], [(float(t), float(v)) for t, v in r["values"]])
            for r in answer["data"]["result"]
        ]

    return fetch


def instant_fetch(base: str, rate: str) -> InstantFetch:
    def fetch(expr: str) -> list[dict[str, Any]]:
        error, result = promapi.evaluate(base, promapi.grafana(expr, rate))
        if error:
            raise RuntimeError(f"{expr}: {error}")
        return result

    return fetch


def _scale(panel: JSON) -> tuple[float, str]:
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    return UNIT_SCALE.get(unit, (1.0, ""))


def _slo(panel: JSON) -> float | None:
    steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
    values = [s["value"] for s in steps if s.get("value") is not None]
    return float(values[0]) if values else None


def _timeseries(ax: Axes, panel: JSON, fetch: RangeFetch, t0: float) -> None:
    factor, unit = _scale(panel)
    drawn = 0
    for target in panel["targets"]:
        for labels, points in fetch(target["expr"]):
            ax.plot(
                [(t - t0) / 60 for t, _ in points],
                [v * factor for _, v in points],
                label=legend(target["legendFormat"], labels) or "all",
                linewidth=1.2,
            )
            drawn += 1
    slo = _slo(panel)
    if slo is not None:
        ax.axhline(slo * factor, color="red", linestyle="--", linewidth=1, label="SLO")
    if not drawn:
        ax.text(0.5, 0.5, "No data", ha="center", va="center", transform=ax.transAxes,
                color="grey")  # fmt: skip
    ax.set_ylabel(unit, fontsize=7)
    ax.set_xlabel("minutes into the traffic", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)
    if drawn or slo is not None:
        ax.legend(fontsize=6, loc="upper left")


def _stat(ax: Axes, panel: JSON, fetch: InstantFetch) -> None:
    result = fetch(panel["targets"][0]["expr"])
    text = "No data" if not result else f"{float(result[0]['value'][1]):g}"
    ax.text(0.5, 0.45, text, ha="center", va="center", fontsize=28, transform=ax.transAxes)
    ax.set_axis_off()


def _table(ax: Axes, panel: JSON, fetch: InstantFetch) -> None:
    columns = panel["transformations"][0]["options"]["include"]["names"]
    rows = [
        [r["metric"].get(c, "") if c != "Value" else r["value"][1] for c in columns]
        for r in fetch(panel["targets"][0]["expr"])
    ]
    ax.set_axis_off()
    if not rows:
        ax.text(0.5, 0.5, "No data", ha="center", va="center", color="grey")
        return
    table = ax.table(cellText=rows, colLabels=columns, loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)


def render(board: JSON, ranged: RangeFetch, instant: InstantFetch, t0: float, out: Path) -> None:
    """Draw every panel of `board` where its gridPos puts it, time in minutes since `t0` (the
    window's start); write the PNG to `out`."""
    panels = board["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    width, height = GRID_WIDTH * INCH_PER_UNIT, rows * INCH_PER_UNIT * 0.4 + 0.6
    fig = plt.figure(figsize=(width, height))
    fig.suptitle(f"{board['title']} (preview from a local Prometheus)", fontsize=12)
    top = 1 - 0.6 / height
    for panel in panels:
        grid = panel["gridPos"]
        x0, x1 = grid["x"] / GRID_WIDTH, (grid["x"] + grid["w"]) / GRID_WIDTH
        y1 = top * (1 - grid["y"] / rows)
        y0 = top * (1 - (grid["y"] + grid["h"]) / rows)
        if panel["type"] == "row":
            fig.text(0.01, (y0 + y1) / 2, panel["title"], fontsize=10, weight="bold")
            continue
        ax = fig.add_axes((x0 + 0.035, y0 + 0.05 * (y1 - y0) + 0.01, (x1 - x0) - 0.05,
                           (y1 - y0) * 0.72))  # fmt: skip
        ax.set_title(panel["title"], fontsize=8)
        if panel["type"] == "timeseries":
            _timeseries(ax, panel, ranged, t0)
        elif panel["type"] == "stat":
            _stat(ax, panel, instant)
        else:
            _table(ax, panel, instant)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
