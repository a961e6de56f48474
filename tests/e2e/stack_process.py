"""What the end-to-end tests share: `gdn-serve run` as a child process, and metric scrapes."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gdn_serve.servers import ServerProcess, gdn_serve_run
from tests.conftest import child_env


def local_stack(log_dir: Path, *args: str) -> tuple[ServerProcess, str]:
    """`gdn-serve run <args>` (not started yet) in the tests' child environment, and its
    metrics URL."""
    return gdn_serve_run(log_dir / "stack.log", *args, env=child_env())


def scrape(metrics_url: str) -> list[Sample]:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]
