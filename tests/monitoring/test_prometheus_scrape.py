"""A real Prometheus (Debian's, on loopback) scrapes the operator's real metrics and loads the
generated rules: every operator-board query returns data and every alert expression, of all
groups, evaluates without error."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from observability import alerts, boards, panels, preview
from observability.promapi import grafana, query
from prometheus_client import CollectorRegistry, start_http_server

from gdn_operator.control.metrics import OperatorMetrics
from gdn_serve.serve.processes import free_port
from tests.monitoring.tools_import import RULES

PROMETHEUS = shutil.which("prometheus")
RATE_INTERVAL = "30s"  # for $__rate_interval: a window over many of the 1 s scrapes


def operator_metrics() -> CollectorRegistry:
    registry = CollectorRegistry()
    metrics = OperatorMetrics(registry)
    metrics.reconcile_duration.labels(result="ok").observe(0.02)
    metrics.reconcile_errors.labels(reason="Conflict").inc()
    metrics.writes.labels(kind="rayservice").inc()
    metrics.queue_depth.set(3)
    metrics.leader.set(1)
    degraded = {"status": {"conditions": [{"type": "Degraded", "status": "True"}]}}
    metrics.watch_objects(lambda: [degraded])
    return registry


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if PROMETHEUS is None:
        pytest.fail("prometheus missing: `make setup` installs Debian's prometheus package")
    folder = tmp_path_factory.mktemp("prometheus")
    target_port, port = free_port(), free_port()
    server, thread = start_http_server(target_port, addr="127.0.0.1", registry=operator_metrics())
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "gdn-operator",
             "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}
        ],
    }  # fmt: skip
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}",
         f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=(folder / "log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # a few scrapes, so rates over 30 s have two points
            try:
                if query(base, "count_over_time(up[1m]) >= 4").get("data", {}).get("result"):
                    break
            except OSError:
                pass
            time.sleep(1)
        else:
            pytest.fail((folder / "log").read_text())
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        server.shutdown()
        thread.join()


def test_every_operator_board_query_returns_data(prometheus: str) -> None:
    empty = []
    for expr in panels.queries(boards.operator()):
        answer = query(prometheus, grafana(expr, RATE_INTERVAL))
        assert answer["status"] == "success", (expr, answer)
        if not answer["data"]["result"]:
            empty.append(expr)
    assert empty == []


def test_every_alert_expression_evaluates(prometheus: str) -> None:
    for alert in alerts.ALERTS:
        answer = query(prometheus, alert.expr)
        assert answer["status"] == "success", (alert.name, answer)


def test_a_bad_expression_is_reported(prometheus: str) -> None:
    """Negative control: the checks above would see a query Prometheus rejects."""
    assert query(prometheus, "sum(rate(gdn_operator_leader[5m]")["status"] == "error"


def test_rules_loaded_and_the_degraded_deployment_is_seen(prometheus: str) -> None:
    with urllib.request.urlopen(f"{prometheus}/api/v1/rules", timeout=10) as response:
        groups = json.load(response)["data"]["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    assert loaded == {a.name for a in alerts.ALERTS}
    degraded = next(a for a in alerts.OPERATOR if a.name == "Qwen35DeploymentDegraded")
    assert query(prometheus, degraded.expr)["data"]["result"]  # pending: its `for` has not run


def test_operator_board_preview_renders_from_the_scrape(prometheus: str, tmp_path: Path) -> None:
    """tools/preview_boards.py's renderer on a real Prometheus answer: every panel's query is
    fetched (a rejected one raises) and a PNG is written."""
    end = time.time()
    ranged = preview.range_fetch(prometheus, end - 60, end, 5, RATE_INTERVAL)
    instant = preview.instant_fetch(prometheus, RATE_INTERVAL)
    out = tmp_path / "operator.png"
    preview.render(boards.operator(), ranged, instant, end - 60, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ranged(boards.LEADER)  # the renderer got real series (the leader gauge)


def test_preview_legends_follow_grafana_templates() -> None:
    labels = {"arch": "sm89", "batch": "2-4", "__name__": "x"}
    assert preview.legend("p50 {{arch}} B={{ batch }}", labels) == "p50 sm89 B=2-4"
    assert preview.legend("__auto", labels) == "arch=sm89, batch=2-4"
