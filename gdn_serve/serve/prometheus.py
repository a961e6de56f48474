"""A Prometheus for the local stack (`gdn-serve run --prometheus`): Debian's `prometheus`,
bound to loopback, scraping the stack's metrics port with the rules and the metric relabelling
the chart ships, so the boards' queries and the alert expressions evaluate without a cluster.

`scrape_config` is pure (it decides the whole configuration); `LocalPrometheus` writes it into a
per-run folder of the project's cache, starts the server as a child of this process and stops it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gdn_serve import paths
from gdn_serve.serve import loopback

JOB = "gdn-serve"
# Ray exports its metrics every few seconds; scraping faster only repeats the same values.
SCRAPE_INTERVAL = "5s"
# The chart writes relabelling in the Prometheus Operator's spelling; Prometheus' own differs.
_OPERATOR_TO_PROMETHEUS = {"sourceLabels": "source_labels", "targetLabel": "target_label"}


class PrometheusError(RuntimeError):
    """Prometheus cannot run here, or did not become ready; the message says why."""


def metric_relabel_configs(operator_rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chart's `metricRelabelings` (Prometheus Operator spelling) as Prometheus'
    `metric_relabel_configs`."""
    return [{_OPERATOR_TO_PROMETHEUS.get(k, k): v for k, v in r.items()} for r in operator_rules]


def scrape_config(
    metrics_target: str, rule_file: Path, operator_relabelling: list[dict[str, Any]]
) -> dict[str, Any]:
    """Prometheus' configuration: one job scraping `metrics_target` (host:port) with the chart's
    metric relabelling, rules and alerts from `rule_file`, evaluated as often as scraped."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(rule_file)],
        "scrape_configs": [
            {
                "job_name": JOB,
                "static_configs": [{"targets": [metrics_target]}],
                "metric_relabel_configs": metric_relabel_configs(operator_relabelling),
            }
        ],
    }


def chart_monitoring_files(folder: Path | None) -> tuple[Path, list[dict[str, Any]]]:
    """The chart's rule file and its arch relabelling (read), or a clear error."""
    if folder is None or not (folder / "rules.yaml").is_file():
        raise PrometheusError(
            "--prometheus needs the chart's monitoring files (charts/qwen35-stack/monitoring): "
            "run gdn-serve from a source checkout"
        )
    relabelling = yaml.safe_load((folder / "arch-relabel.yaml").read_text(encoding="utf-8"))
    return folder / "rules.yaml", list(relabelling)


@dataclass(frozen=True)
class PrometheusOptions:
    metrics_port: int  # the local stack's metrics port, the one target
    port: int  # where Prometheus serves its UI and HTTP API (on loopback)
    binary: str | None = None  # default: `prometheus` on PATH (Debian's package)


class LocalPrometheus:
    """Prometheus scraping the local stack. Its TSDB lives in a fresh folder under the cache,
    removed by `stop()`: a run's history ends with the run, and two runs never share a lock."""

    def __init__(self, opts: PrometheusOptions, monitoring: Path | None = None) -> None:
        self.opts = opts
        self.rules, self.relabelling = chart_monitoring_files(
            monitoring or paths.chart_monitoring_dir()
        )
        self.binary = opts.binary or shutil.which("prometheus")
        if self.binary is None:
            raise PrometheusError(
                "--prometheus needs Debian's prometheus package (`make setup` installs it)"
            )
        self.folder: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{loopback.LOOPBACK}:{self.opts.port}"

    def start(self, timeout_s: float = 60.0) -> LocalPrometheus:
        assert self.binary is not None
        parent = paths.prometheus_dir()
        parent.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="run-", dir=parent))
        config = scrape_config(
            f"{loopback.LOOPBACK}:{self.opts.metrics_port}", self.rules, self.relabelling
        )
        (self.folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        with (self.folder / "prometheus.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.folder / 'data'}",
                    f"--web.listen-address={loopback.LOOPBACK}:{self.opts.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.proc is not None and self.folder is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        log = (self.folder / "prometheus.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise PrometheusError(f"Prometheus did not become ready on {self.url}:\n{log}")

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
