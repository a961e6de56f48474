"""`make loadtest` / `python -m gdn_serve.loadtest`: a headless Locust run against `--url`, or
against a local stack it starts (and stops) itself.

Every option this command does not know goes to Locust and the load test's own options
(`locust -f gdn_serve/loadtest/locustfile.py --help` lists them: workload, arrivals, SLOs).
Locust's CSV and HTML report and the load test's summary, records and plot all go to `--out`.
The exit code is Locust's: 0, 1 when requests failed, 3 when an SLO was missed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from gdn_serve import envs, paths

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def locust_argv(host: str, out: Path, users: int, extra: Sequence[str]) -> list[str]:
    """The headless Locust command of one run, its files under `out`."""
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", host, "--users", str(users), "--spawn-rate", str(users),
        "--csv", str(out / "locust"), "--html", str(out / "locust.html"),
        "--report-dir", str(out), "--only-summary", *extra,
    ]  # fmt: skip


def run_locust(argv: Sequence[str], api_key: str) -> int:
    env = {**os.environ, "OPENAI_API_KEY": api_key} if api_key else dict(os.environ)
    return subprocess.run(argv, env=env, check=False).returncode


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m gdn_serve.loadtest", description=__doc__)
    parser.add_argument("--url", default="", help="server root (default: start a local stack)")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""),
                        help="Bearer key for --url (default: $OPENAI_API_KEY)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="results folder (default: .cache/loadtest)")
    parser.add_argument("--users", type=int, default=8, help="closed-loop users")
    parser.add_argument("--max-model-len", type=int, default=1024, help="local stack only")
    return parser.parse_known_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = parse_args(argv)
    out = args.out or paths.cache_root() / "loadtest"
    out.mkdir(parents=True, exist_ok=True)
    if args.url:
        return run_locust(locust_argv(args.url, out, args.users, extra), args.api_key)
    from gdn_serve.serve.processes import gdn_serve_run

    paths.apply_cache_env()
    key = secrets.token_urlsafe(24)  # the local stack's key for this run only
    server, _ = gdn_serve_run(
        out / "stack.log", "--max-model-len", str(args.max_model_len),
        env={envs.API_KEY.name: key},
    )  # fmt: skip
    server.start(timeout_s=900)
    try:
        return run_locust(locust_argv(server.api_url, out, args.users, extra), key)
    finally:
        server.stop()
