"""`gdn-serve bench-stack`: vLLM's own OpenAI server against our Ray Serve stack.

Same machine, same checkpoint, same engine arguments, one run: each server in turn (never
both at once, so neither steals the other's CPU) takes a closed-loop load of streaming
completions at each concurrency level from the load test (`gdn_serve.loadtest`, one Locust
worker: one client to trust), with seeded prompts of `--prompt-tokens` words and exactly
`--output-tokens` output tokens (`ignore_eos`, `min_tokens`). Reported: output tokens/s, TTFT
and inter-token latency percentiles, and the ratios of our stack to vLLM. Rounds alternate the
two servers so that drift of the machine hits both; each level's Locust files stay under
`.cache/bench-stack/<system>-c<concurrency>/`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gdn_serve import paths
from gdn_serve.loadtest.main import locust_argv
from gdn_serve.serve.local import DEFAULT_SERVED_NAME, LocalOptions, app_config
from gdn_serve.serve.processes import ServerProcess, free_port, gdn_serve_run

SYSTEMS = ("vllm", "stack")


@dataclass
class LevelResult:
    system: str
    concurrency: int
    requests: int
    wall_s: float
    output_tokens: int
    ttft_ms: dict[str, float] = field(default_factory=dict)
    itl_ms: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.wall_s


def level_result(system: str, concurrency: int, summary: dict[str, Any]) -> LevelResult:
    """One level's numbers from the load test's `summary.json`."""

    def cuts(metric: str) -> dict[str, float]:
        return {f"p{q}": summary["ms"][metric][str(q)] for q in (50, 90, 99)}

    return LevelResult(
        system=system,
        concurrency=concurrency,
        requests=summary["requests"],
        wall_s=summary["duration_s"],
        output_tokens=summary["output_tokens"],
        ttft_ms=cuts("ttft"),
        itl_ms=cuts("itl"),
    )


def run_level(
    api_url: str, out: Path, concurrency: int, requests: int, options: Sequence[str]
) -> dict[str, Any]:
    """`requests` streamed completions from `concurrency` closed-loop Locust users (the load
    test, docs/loadtest.md), after a warm-up of one request per user; its summary."""
    argv = locust_argv(api_url, out, concurrency, [
        "--request-count", str(requests), "--warmup-requests", str(concurrency), *options,
    ])  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load test against {api_url} failed:\n{done.stdout[-3000:]}")
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return summary


def workload_options(args: argparse.Namespace) -> list[str]:
    return [
        "--model", DEFAULT_SERVED_NAME, "--input-tokens", str(args.prompt_tokens),
        "--output-tokens", str(args.output_tokens),
    ]  # fmt: skip


def server_for(system: str, model: str, args: argparse.Namespace, logs: Path) -> ServerProcess:
    """The server command of one system, both with the same engine arguments."""
    if system == "stack":
        server, _ = gdn_serve_run(
            logs / "stack.log", "--model", model, "--served-model-name", DEFAULT_SERVED_NAME,
            "--max-model-len", str(args.max_model_len),
        )  # fmt: skip
        return server
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/v1"
    engine = app_config(LocalOptions(max_model_len=args.max_model_len), model).engine_kwargs
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--served-model-name",
        DEFAULT_SERVED_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        str(args.max_model_len),
        "--dtype",
        str(engine["dtype"]),
        "--kv-cache-memory-bytes",
        str(engine["kv_cache_memory_bytes"]),
    ]
    return ServerProcess(argv, api_url, logs / "vllm.log")


def bench_system(
    system: str, model: str, args: argparse.Namespace, logs: Path
) -> list[LevelResult]:
    server = server_for(system, model, args, logs).start(timeout_s=900)
    try:
        results = []
        for concurrency in args.concurrency:
            requests = max(args.min_requests, concurrency * args.requests_per_slot)
            out = logs / f"{system}-c{concurrency}"
            summary = run_level(server.api_url, out, concurrency, requests, workload_options(args))
            results.append(level_result(system, concurrency, summary))
            print(format_row(results[-1]), flush=True)
        return results
    finally:
        server.stop()


def format_row(r: LevelResult) -> str:
    return (
        f"{r.system:6} c={r.concurrency:<3} {r.tokens_per_s:8.0f} tok/s  "
        f"TTFT p50/p90/p99 {r.ttft_ms['p50']:6.1f}/{r.ttft_ms['p90']:6.1f}/"
        f"{r.ttft_ms['p99']:6.1f} ms  ITL p50/p90/p99 {r.itl_ms['p50']:5.1f}/"
        f"{r.itl_ms['p90']:5.1f}/{r.itl_ms['p99']:5.1f} ms"
    )


def median_by_level(results: list[LevelResult], system: str, concurrency: int) -> dict[str, float]:
    rows = [r for r in results if r.system == system and r.concurrency == concurrency]
    return {
        "tokens_per_s": statistics.median(r.tokens_per_s for r in rows),
        "ttft_p50_ms": statistics.median(r.ttft_ms["p50"] for r in rows),
        "itl_p50_ms": statistics.median(r.itl_ms["p50"] for r in rows),
    }


def report(results: list[LevelResult], concurrencies: Sequence[int]) -> str:
    lines = [
        "| concurrency | vLLM tok/s | stack tok/s | ratio | TTFT p50 vLLM / stack (ms) "
        "| ITL p50 vLLM / stack (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for c in concurrencies:
        a, b = median_by_level(results, "vllm", c), median_by_level(results, "stack", c)
        lines.append(
            f"| {c} | {a['tokens_per_s']:.0f} | {b['tokens_per_s']:.0f} | "
            f"{b['tokens_per_s'] / a['tokens_per_s']:.2f} | {a['ttft_p50_ms']:.1f} / "
            f"{b['ttft_p50_ms']:.1f} | {a['itl_p50_ms']:.1f} / {b['itl_p50_ms']:.1f} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gdn-serve bench-stack", description=__doc__)
    parser.add_argument("--model", help="checkpoint (default: the tiny model)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument(
        "--requests-per-slot",
        type=int,
        default=4,
        help="requests per level = concurrency x this (at least --min-requests)",
    )
    parser.add_argument("--min-requests", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per system")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--out", type=Path, help="write every result as JSON here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from gdn_serve.tiny_model import resolve_model

    args = parse_args(argv)
    paths.apply_cache_env()
    model = resolve_model(args.model)
    logs = paths.cache_root() / "bench-stack"
    results: list[LevelResult] = []
    for _ in range(args.rounds):
        for system in SYSTEMS:
            results.extend(bench_system(system, model, args, logs))
    table = report(results, args.concurrency)
    print(table)
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    return 0
