"""`gdn_serve.serve.prometheus` without the stack: the configuration it builds from the chart's
files passes `promtool check config`, and a real Prometheus it starts relabels Ray Serve series
the way the chart does (the target is a `prometheus_client` server exposing series named and
tagged as Ray exports them) and is gone after `stop()`."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from observability import promapi
from prometheus_client import CollectorRegistry, Counter, start_http_server

from gdn_serve import paths
from gdn_serve.cli import banner, build_parser
from gdn_serve.serve.local import LocalOptions, LocalStack
from gdn_serve.serve.processes import free_port
from gdn_serve.serve.prometheus import (
    LocalPrometheus,
    PrometheusError,
    PrometheusOptions,
    chart_monitoring_files,
    scrape_config,
)

PROMTOOL = shutil.which("promtool")


def test_config_from_the_chart_files_passes_promtool(tmp_path: Path) -> None:
    if PROMTOOL is None:
        pytest.fail("promtool missing: `make setup` installs Debian's prometheus package")
    rules, relabelling = chart_monitoring_files(paths.chart_monitoring_dir())
    config = scrape_config("127.0.0.1:8080", rules, relabelling)
    relabel = config["scrape_configs"][0]["metric_relabel_configs"]
    assert relabel and all("sourceLabels" not in r and "targetLabel" not in r for r in relabel)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_missing_chart_files_or_binary_are_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(PrometheusError, match="chart's monitoring files"):
        chart_monitoring_files(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no prometheus binary there
    with pytest.raises(PrometheusError, match="prometheus package"):
        LocalPrometheus(PrometheusOptions(8080, 9090), paths.chart_monitoring_dir())


@pytest.mark.parametrize("bad", ["0", "65536", "http"])
def test_prometheus_port_must_be_a_port(bad: str) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--prometheus", bad])


def test_prometheus_flag_without_a_port_means_a_free_one() -> None:
    assert build_parser().parse_args(["run", "--prometheus"]).prometheus == 0
    assert build_parser().parse_args(["run"]).prometheus is None


@pytest.fixture
def ray_like_target() -> Iterator[int]:
    """A fake of Ray's metrics export (named as one in this docstring): Ray Serve's request
    counter for two LLM deployments as Ray tags them, and one series that carries its own arch."""
    registry = CollectorRegistry()
    requests = Counter(
        "ray_serve_deployment_request_counter",
        "requests",
        ["deployment", "arch"],
        registry=registry,
    )
    requests.labels(deployment="LLMServer:llm-sm89", arch="").inc(3)
    requests.labels(deployment="LLMServer:llm-cpu", arch="").inc(1)
    requests.labels(deployment="ArchBalancedIngress", arch="").inc(4)
    decode = Counter("ray_gdn_serve_probe", "own arch", ["arch", "deployment"], registry=registry)
    decode.labels(arch="sm90", deployment="LLMServer:llm-sm89").inc()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield port
    server.shutdown()
    thread.join()


def _labels(base: str, expr: str) -> list[dict[str, str]]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        error, result = promapi.evaluate(base, expr)
        assert error is None, error
        if result:
            return [r["metric"] for r in result]
        time.sleep(1)
    raise AssertionError(f"no scrape of {expr} within 30 s")


def test_local_prometheus_scrapes_with_the_chart_relabelling(ray_like_target: int) -> None:
    prometheus = LocalPrometheus(PrometheusOptions(ray_like_target, free_port())).start()
    folder = prometheus.folder
    assert folder is not None and folder.parent == paths.prometheus_dir()
    try:
        series = _labels(prometheus.url, "ray_serve_deployment_request_counter_total")
        arch = {s["deployment"]: s.get("arch") for s in series}
        assert arch == {"LLMServer:llm-sm89": "sm89", "LLMServer:llm-cpu": "cpu",
                        "ArchBalancedIngress": None}  # fmt: skip
        own = _labels(prometheus.url, "ray_gdn_serve_probe_total")
        assert [s["arch"] for s in own] == ["sm90"]  # a series' own arch wins
        rules = promapi.get(prometheus.url, "/api/v1/rules")["data"]["groups"]
        assert rules, "the chart's rules are loaded"
    finally:
        proc = prometheus.proc
        prometheus.stop()
    assert proc is not None and proc.poll() is not None
    assert not folder.exists()


def test_banner_names_the_prometheus_url() -> None:
    stack = LocalStack(LocalOptions(), "/models/tiny")
    prometheus = LocalPrometheus(PrometheusOptions(metrics_port=8080, port=9191))
    assert "Prometheus  http://127.0.0.1:9191" in banner(stack, prometheus)
    assert "Prometheus" not in banner(stack)
