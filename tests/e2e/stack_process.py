"""What the end-to-end tests share: `gdn-serve run` as a child process, a one-process vLLM
engine run (`vllm_greedy.py`) as a child process, and metric scrapes."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gdn_serve.serve.processes import ServerProcess, child_environment, gdn_serve_run
from tests.conftest import child_env


def local_stack(
    log_dir: Path, *args: str, env: Mapping[str, str | None] | None = None
) -> tuple[ServerProcess, str]:
    """`gdn-serve run <args>` (not started yet) in the tests' child environment, `env` on top,
    and its metrics URL."""
    return gdn_serve_run(log_dir / "stack.log", *args, env={**child_env(), **(env or {})})


def scrape(metrics_url: str) -> list[Sample]:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def start_vllm_greedy(
    workdir: Path, name: str, request: Mapping[str, Any], env: Mapping[str, str | None]
) -> subprocess.Popen[bytes]:
    """Start `vllm_greedy.py` on `request` in `workdir`; `env` adds to the tests' child
    environment. Its result is `<name>.json` and its log `<name>.log` there."""
    (workdir / f"{name}.request.json").write_text(json.dumps(request))
    script = Path(__file__).with_name("vllm_greedy.py")
    with (workdir / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, str(script), f"{name}.request.json", f"{name}.json"],
            cwd=workdir,
            env=child_environment({**child_env(), **env}),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def vllm_greedy_result(
    workdir: Path, name: str, run: subprocess.Popen[bytes], timeout_s: float = 600
) -> dict[str, Any]:
    """Wait for a `start_vllm_greedy` run; its result, or its log's tail as the failure."""
    assert run.wait(timeout=timeout_s) == 0, (workdir / f"{name}.log").read_text()[-3000:]
    result: dict[str, Any] = json.loads((workdir / f"{name}.json").read_text())
    return result
