"""What the end-to-end tests share: `gdn-serve run` as a child process, and metric scrapes."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gdn_serve.serve.local import free_port
from gdn_serve.servers import ServerProcess
from tests.conftest import child_env


def local_stack(log_dir: Path, *args: str) -> tuple[ServerProcess, str]:
    """`gdn-serve run <args>` on free loopback ports (not started yet), and its metrics URL."""
    port, metrics_port = free_port(), free_port()
    gdn_serve = Path(sys.executable).with_name("gdn-serve")
    argv = [str(gdn_serve), "run", "--port", str(port), "--metrics-port", str(metrics_port)]
    server = ServerProcess(
        [*argv, "--quiet", *args],
        api_url=f"http://127.0.0.1:{port}/v1",
        log_path=log_dir / "stack.log",
        env=child_env(),
    )
    return server, f"http://127.0.0.1:{metrics_port}/metrics"


def scrape(metrics_url: str) -> list[Sample]:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]
