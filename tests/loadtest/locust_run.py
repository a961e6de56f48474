"""What the Locust tests share: one headless `locust` run in a child process, and its files."""

from __future__ import annotations

import csv
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdn_serve.loadtest.main import locust_argv
from gdn_serve.serve.processes import child_environment
from tests.conftest import child_env


@dataclass
class LocustRun:
    code: int
    output: str
    out: Path

    def summary(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.out / "summary.json").read_text())
        return loaded

    def records(self) -> list[dict[str, Any]]:
        lines = (self.out / "requests.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    def stats(self) -> dict[tuple[str, str], dict[str, str]]:
        """Locust's own CSV: (type, name) -> row."""
        with (self.out / "locust_stats.csv").open() as f:
            return {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}

    def failures(self) -> list[dict[str, str]]:
        with (self.out / "locust_failures.csv").open() as f:
            return list(csv.DictReader(f))


def run_locust(
    host: str, out: Path, *options: str, users: int = 2, api_key: str = "", timeout_s: int = 300
) -> LocustRun:
    argv = locust_argv(host, out, users, ["--run-time", f"{timeout_s - 30}s", *options])
    env = child_environment({**child_env(), "OPENAI_API_KEY": api_key or None})
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s)
    return LocustRun(done.returncode, done.stdout + done.stderr, out)
