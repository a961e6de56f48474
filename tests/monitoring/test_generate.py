"""Boards and rules as code: the committed files are what the code generates, and every metric a
board or rule queries is one that some code defines."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from observability import alerts, boards, known_metrics, panels

from tests.monitoring.tools_import import GENERATE, ROOT


def test_committed_files_equal_generated() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools/generate_monitoring.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_check_mode_reports_stale_unknown_and_undefined() -> None:
    """Negative controls: one edited file, one stray board, one panel with an unknown metric."""
    files = GENERATE.outputs()
    queries = GENERATE.all_queries()
    known = known_metrics.defined()
    board = next(p for p in files if p.suffix == ".json")
    stray = GENERATE.DASHBOARDS / "hand-made.json"

    def read(path: Path) -> str | None:
        return files[path] + " " if path == board else files.get(path)

    assert GENERATE.problems(files, queries, known, files.get, list(files)) == []
    queries["qwen35-serving.json"].append('sum(rate(ray_vllm_no_such_metric_total{a="b"}[5m]))')
    errors = GENERATE.problems(files, queries, known, read, [*files, stray])
    assert any("ray_vllm_no_such_metric_total" in e for e in errors), errors
    assert any(board.name in e and "stale" in e for e in errors), errors
    assert any("hand-made.json is not generated" in e for e in errors), errors
    assert len(errors) == 3


def test_known_names_come_from_each_source() -> None:
    """Each source yields the names the boards rely on (read from code, not listed here)."""
    assert "ray_gdn_serve_decode_seconds" in known_metrics.gdn_serve_names()
    assert {"ray_vllm_time_to_first_token_seconds", "ray_vllm_kv_cache_usage_perc"} <= (
        known_metrics.vllm_names()
    )
    assert {"ray_serve_deployment_replica_healthy", "ray_serve_num_http_error_requests"} <= (
        known_metrics.ray_serve_names()
    )
    assert "gdn_operator_reconcile_errors" in known_metrics.operator_names()


def test_queried_names_skip_functions_labels_and_durations() -> None:
    expr = (
        'histogram_quantile(0.5, sum by (le, arch) (rate(a_bucket{x="y:z"}[6h] offset 10m)))'
        ' > 2 * on (arch) group_left (backend) b_info or absent(c) and d{e=~"f"} > 1e-3'
    )
    assert known_metrics.queried(expr) == {"a_bucket", "b_info", "c", "d"}


def test_counters_and_histograms_use_rate_interval() -> None:
    """Every rate on a board is over $__rate_interval: no lifetime averages, no fixed window."""
    for name, build in boards.BOARDS.items():
        for expr in panels.queries(build()):
            windows = re.findall(r"\[([^\]]+)\]", expr)
            assert all(w == "$__rate_interval" for w in windows), (name, expr)


def test_serving_board_is_split_by_arch_with_its_variables() -> None:
    board = boards.serving()
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "namespace", "deployment", "model", "arch"}
    series = [p for p in board["panels"] if p["type"] == "timeseries"]
    assert series and all(
        "by (le, arch)" in t["expr"] or "by (arch" in t["expr"] or "error_code" in t["expr"]
        for p in series
        for t in p["targets"]
    )


def test_kernel_board_splits_decode_by_batch_bucket() -> None:
    exprs = list(panels.queries(boards.kernels()))
    assert any("by (le, backend, arch, batch)" in e for e in exprs)


def test_every_alert_is_annotated() -> None:
    for group in alerts.rule_groups()["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
