"""A benchmark, not a test: how many streamed requests per second one Locust worker of the load
test sustains against the FAKE server (`fake_sse`, loopback, no model), so that a result of the
real stack can be told apart from a limit of the client. `python -m
gdn_serve.loadtest.generator_bench`; the numbers are in docs/loadtest.md.

The fake runs in this process and Locust in a child, so on a 2-core machine each has a core.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from gdn_serve.loadtest.fake_sse import FakeOptions, FakeServer
from gdn_serve.loadtest.main import locust_argv


def one_level(url: str, users: int, output_tokens: int, requests: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        argv = locust_argv(url, Path(out), users, [
            "--request-count", str(requests), "--warmup-requests", str(users),
            "--output-tokens", str(output_tokens), "--model", "fake-model",
        ])  # fmt: skip
        subprocess.run(argv, check=True, capture_output=True)
        summary = json.loads((Path(out) / "summary.json").read_text())
    assert summary["failures"] == 0, summary
    return {
        "requests_per_s": summary["requests"] / summary["duration_s"],
        "tokens_per_s": summary["output_tokens"] / summary["duration_s"],
        "ttft_p50_ms": summary["ms"]["ttft"]["50"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--output-tokens", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args(argv)
    print(
        f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    )
    print("| users | output tokens | requests/s | streamed tokens/s | TTFT p50 (ms) |")
    print("|---|---|---|---|---|")
    with FakeServer(FakeOptions()) as fake:
        for tokens in args.output_tokens:
            for users in args.users:
                r = one_level(fake.url, users, tokens, args.requests)
                cells = (users, tokens, f"{r['requests_per_s']:.0f}", f"{r['tokens_per_s']:.0f}")
                print("| " + " | ".join(map(str, cells)) + f" | {r['ttft_p50_ms']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
