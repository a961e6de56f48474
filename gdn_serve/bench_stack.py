"""`gdn-serve bench-stack`: vLLM's own OpenAI server against our Ray Serve stack.

Same machine, same checkpoint, same engine arguments, one run: each server in turn (never
both at once, so neither steals the other's CPU) takes a closed-loop load of streaming
completions at each concurrency level, with a fixed prompt of `--prompt-tokens` token ids and
exactly `--output-tokens` output tokens (`ignore_eos`). Reported: output tokens/s, TTFT and
inter-token latency percentiles, and the ratios of our stack to vLLM. Rounds alternate the two
servers so that drift of the machine hits both.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

from gdn_serve import paths
from gdn_serve.serve.local import DEFAULT_SERVED_NAME, LocalOptions, app_config
from gdn_serve.servers import ServerProcess, free_port, gdn_serve_run

SYSTEMS = ("vllm", "stack")


@dataclass
class RequestSample:
    ttft_s: float
    itl_s: list[float]
    output_tokens: int


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


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 in milliseconds (inclusive method: defined for any non-empty sample)."""
    if len(values) < 2:
        return {k: 1000 * (values[0] if values else float("nan")) for k in ("p50", "p90", "p99")}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": 1000 * cuts[49], "p90": 1000 * cuts[89], "p99": 1000 * cuts[98]}


# The client shares the 2 cores with the servers it measures: decode only the fields it needs,
# in C (msgspec), so that it keeps up with thousands of stream events per second.
class _Choice(msgspec.Struct):
    text: str = ""


class _Usage(msgspec.Struct):
    completion_tokens: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


async def stream_one(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> RequestSample:
    """One streaming completion; times the first token and the gaps between later ones."""
    start = time.perf_counter()
    stamps: list[float] = []
    tokens = 0
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = _decode_chunk(line[6:])
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].text:
                stamps.append(time.perf_counter())
    if not stamps:
        raise RuntimeError(f"no tokens streamed from {url}")
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return RequestSample(ttft_s=stamps[0] - start, itl_s=gaps, output_tokens=tokens)


async def run_level(
    api_url: str, body: dict[str, Any], concurrency: int, requests: int
) -> tuple[float, list[RequestSample]]:
    """`requests` completions with `concurrency` in flight; returns wall time and samples."""
    url = f"{api_url}/completions"
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    samples: list[RequestSample] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                samples.append(await stream_one(client, url, body))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, samples


def summarize(
    system: str, concurrency: int, wall_s: float, samples: list[RequestSample]
) -> LevelResult:
    return LevelResult(
        system=system,
        concurrency=concurrency,
        requests=len(samples),
        wall_s=wall_s,
        output_tokens=sum(s.output_tokens for s in samples),
        ttft_ms=percentiles([s.ttft_s for s in samples]),
        itl_ms=percentiles([gap for s in samples for gap in s.itl_s]),
    )


def request_body(model: str, prompt_ids: list[int], output_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": prompt_ids,
        "max_tokens": output_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def prompt_ids(model_source: str, count: int) -> list[int]:
    """Exactly `count` token ids of ordinary text, for any tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_source)
    text = "The stack serves an OpenAI-compatible API over vLLM engines. " * count
    ids: list[int] = tokenizer(text, add_special_tokens=False).input_ids
    return ids[:count]


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
    system: str, model: str, args: argparse.Namespace, logs: Path, body: dict[str, Any]
) -> list[LevelResult]:
    server = server_for(system, model, args, logs).start(timeout_s=900)
    try:
        asyncio.run(run_level(server.api_url, body, 4, 8))  # warm-up, not counted
        results = []
        for concurrency in args.concurrency:
            requests = max(args.min_requests, concurrency * args.requests_per_slot)
            wall, samples = asyncio.run(run_level(server.api_url, body, concurrency, requests))
            results.append(summarize(system, concurrency, wall, samples))
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
    from gdn_serve.cli import resolve_model

    args = parse_args(argv)
    paths.apply_cache_env()
    model = resolve_model(args.model)
    body = request_body(
        DEFAULT_SERVED_NAME, prompt_ids(model, args.prompt_tokens), args.output_tokens
    )
    logs = paths.cache_root() / "bench-stack"
    results: list[LevelResult] = []
    for _ in range(args.rounds):
        for system in SYSTEMS:
            results.extend(bench_system(system, model, args, logs, body))
    table = report(results, args.concurrency)
    print(table)
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    return 0
