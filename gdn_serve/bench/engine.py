"""`gdn-serve bench-engine`: a real CUDA vLLM engine with and without our plugin, one run.

Offline generation (`vllm.LLM`, engine in this process so torch.profiler sees its kernels) on a
real-shaped random checkpoint (`gdn-serve tiny-model --shape ...`), fixed output length
(`ignore_eos`), at each batch size, for vLLM without the plugin and with each backend forced, fp32
and bf16 state. Per (backend, state dtype, batch):
- time per decode step as vLLM's own metrics give it (mean `vllm:inter_token_latency_seconds`
  over generates of T output tokens) and decode tokens/s = batch / that; and from wall time,
  (t(T) - t(1)) / (T - 1), with t(n) the time of a generate of n output tokens (noisier: a
  cross-check);
- the GPU time of the GDN layer per decode step, from the profiler's kernel records of a decode
  run: every kernel between a GDN layer's input and output projection GEMMs (`layer_windows`:
  conv update + recurrence + gated norm + vLLM's zero fill and copies), summed per step;
- the cost of our latency timing: one more engine, the fused backend with timing off
  (`GDN_SERVE_DECODE_SAMPLE_EVERY=0`: no events in the graphs either), against the same with
  timing on (the default).
Each (backend, state dtype) runs in a child process (`--worker`): one engine per process.

Also the engine helpers the GPU tests use (`EngineSpec`, `start_engine`, `layer_counts`, ...).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

MODES = ("FULL_AND_PIECEWISE", "FULL_DECODE_ONLY", "FULL", "PIECEWISE", "eager")
BACKENDS = ("none", "triton", "triton-fused", "vllm")
BATCHES = (1, 8, 32, 128, 256)
# Kernels that start a GDN layer's decode step: vLLM's conv update (its path and our unfused
# backends) or our fused kernel, which does the conv itself.
DECODE_ANCHORS = ("_causal_conv1d_update_kernel", "_gdn_fused_kernel")
# Matrix products (the layer's projections) bound a layer's window.
GEMM_MARKS = ("gemm", "nvjet", "xmma", "cutlass", "cublas", "splitk", "matmul", "wgmma")


@dataclass(frozen=True)
class EngineSpec:
    model: str
    mode: str = "FULL_AND_PIECEWISE"  # a CUDA-graph mode of vLLM's, or "eager"
    backend: str | None = None  # None: vLLM without our plugin
    state_dtype: str = "float32"
    max_num_seqs: int = 16
    capture_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    kv_cache_gib: float = 2.0
    gpu_memory_utilization: float = 0.9  # vLLM refuses to start with less free: lower it to
    # run several engines on one GPU at once
    max_model_len: int = 1024
    max_num_batched_tokens: int | None = None
    sample_every: int = 1  # our latency sampling (0: off)
    count_decodes: bool = True
    fused_max_batch: int | None = None  # the fused kernel's batch limit (None: the default)
    # name -> module with `decode`, `prepare` and `warm` (tests: a deliberately wrong kernel)
    extra_backends: dict[str, str] = field(default_factory=dict)


def engine_env(spec: EngineSpec) -> dict[str, str]:
    """What must be in the environment before vLLM is imported."""
    from gdn_serve import envs

    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine in this process (profiler, counts)
        "VLLM_PLUGINS": "",  # none from entry points: `start_engine` registers ours itself
        "VLLM_USE_FLASHINFER_SAMPLER": "0",  # FlashInfer is not carried to the GPU machines
        # `llm.apply_model(function)` reads our layers' counters; vLLM refuses to pass a
        # function through its RPC without this (in-process here: nothing crosses a socket)
        "VLLM_ALLOW_INSECURE_SERIALIZATION": "1",
        envs.DECODE_SAMPLE_EVERY.name: str(spec.sample_every),
        envs.COUNT_DECODES.name: "1" if spec.count_decodes else "0",
    }
    if spec.backend is not None:
        env[envs.BACKEND.name] = spec.backend
    if spec.fused_max_batch is not None:
        env[envs.FUSED_MAX_BATCH.name] = str(spec.fused_max_batch)
    return env


def engine_kwargs(spec: EngineSpec) -> dict[str, Any]:
    """`vllm.LLM` arguments. FLASH_ATTN (FA3) attention and the Triton GDN prefill: what the
    GPU machines carry (FlashInfer, vLLM's SM90 default for the GDN prefill, is not there)."""
    kwargs: dict[str, Any] = {
        "model": spec.model,
        "dtype": "bfloat16",
        "seed": 0,
        "max_model_len": spec.max_model_len,
        "max_num_seqs": spec.max_num_seqs,
        "kv_cache_memory_bytes": int(spec.kv_cache_gib * (1 << 30)),
        "gpu_memory_utilization": spec.gpu_memory_utilization,
        "mamba_ssm_cache_dtype": spec.state_dtype,
        "attention_backend": "FLASH_ATTN",
        "gdn_prefill_backend": "triton",
        "enable_prefix_caching": False,
        "disable_log_stats": False,  # the engine's metrics: the bench reads its token latency
    }
    if spec.max_num_batched_tokens:
        kwargs["max_num_batched_tokens"] = spec.max_num_batched_tokens
    if spec.mode == "eager":
        kwargs["enforce_eager"] = True
    else:
        kwargs["compilation_config"] = {
            "cudagraph_mode": spec.mode,
            "cudagraph_capture_sizes": list(spec.capture_sizes),
        }
    return kwargs


def start_engine(spec: EngineSpec) -> Any:
    """A `vllm.LLM` for `spec`, our plugin registered first when a backend is asked for."""
    os.environ.update(engine_env(spec))
    if spec.backend is not None:
        _add_test_backends(spec.extra_backends)
        from gdn_serve.plugin.entry import register

        register()
    from vllm import LLM

    return LLM(**engine_kwargs(spec))


def _add_test_backends(extra: dict[str, str]) -> None:
    """Backends outside the registry, for tests (a deliberately wrong kernel: the negative
    control): `name -> module`, the module defining `decode`, `prepare` and `warm` like ours."""
    if not extra:
        return
    from gdn_serve.backends import registry, rules

    for name, module in extra.items():
        rules.KNOWN_BACKENDS = (*rules.KNOWN_BACKENDS, name)
        rules.REQUIREMENTS[name] = rules.Requirement(
            False, 80, None, rules.STATE_DTYPES, None, None
        )
        registry.BACKENDS[name] = registry.Backend(
            name, module, "decode", fused=False, prepare="prepare", warm="warm"
        )


def _routes(model: Any) -> dict[str, Any]:
    return {
        module.prefix: module.gdn_route
        for module in model.modules()
        if getattr(module, "gdn_route", None) is not None
    }


def layer_counts(llm: Any) -> dict[str, list[int]]:
    """Each routed layer's (decode batches it ran, other batches it left to vLLM), counted on
    the GPU: CUDA graph replays included."""

    def read(model: Any) -> dict[str, list[int]]:
        return {name: list(route.counts() or (-1, -1)) for name, route in _routes(model).items()}

    return dict(llm.apply_model(read)[0])


def flush_timings(llm: Any) -> None:
    """Read the latency samples CUDA graph replays left (twice: the first read only starts the
    reference event, the second reads after its interval)."""
    from gdn_serve.plugin import timing

    def poll(model: Any) -> int:
        for route in _routes(model).values():
            route.poll()
        return 0

    for _ in range(2):
        llm.apply_model(poll)
        time.sleep(timing.POLL_S + 0.1)
    llm.apply_model(poll)


def decode_samples() -> dict[str, float]:
    """`gdn_serve_decode_seconds` sample counts in this process, by label set."""
    from prometheus_client import REGISTRY

    found: dict[str, float] = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == "gdn_serve_decode_seconds_count":
                found[json.dumps(sample.labels, sort_keys=True)] = sample.value
    return found


def prompts(count: int, length: int, seed: int = 0) -> list[str]:
    """`count` prompts of `length` printable characters (one token each in the tiny models'
    byte-level tokenizer), deterministic."""
    rng = random.Random(seed)
    alphabet = [chr(c) for c in range(0x21, 0x7F)]
    return ["".join(rng.choice(alphabet) for _ in range(length)) for _ in range(count)]


def greedy(output_tokens: int, logprobs: int | None = None) -> Any:
    from vllm import SamplingParams

    return SamplingParams(
        temperature=0.0, max_tokens=output_tokens, min_tokens=output_tokens, ignore_eos=True,
        logprobs=logprobs,
    )  # fmt: skip


# -- the GDN layer's GPU time from kernel records (pure) ---------------------------------------


def _is_gemm(name: str) -> bool:
    low = name.lower()
    return any(mark in low for mark in GEMM_MARKS)


def layer_windows(kernels: Sequence[tuple[str, float]]) -> list[list[tuple[str, float]]]:
    """Each GDN layer decode step in a stream-ordered kernel record, as its kernels: around each
    anchor kernel, every kernel back to the input projection's GEMM and on to the output
    projection's (zero fills, copies, conv, recurrence, gated norm), whatever their names."""
    windows = []
    for i, (name, _) in enumerate(kernels):
        if not any(anchor in name for anchor in DECODE_ANCHORS):
            continue
        start = i
        while start > 0 and not _is_gemm(kernels[start - 1][0]):
            start -= 1
        end = i
        while end + 1 < len(kernels) and not _is_gemm(kernels[end + 1][0]):
            end += 1
        windows.append(list(kernels[start : end + 1]))
    return windows


def profiled_kernels(run: Any) -> tuple[list[tuple[str, float]], float]:
    """(name, µs) of every GPU activity `run()` caused (kernels, also those replayed from CUDA
    graphs, memsets, copies), in start order, from the profiler's raw device records; and the
    µs from the first one's start to the last one's end (busy / span: how fed the GPU was)."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    raw = [e for e in prof.profiler.kineto_results.events() if e.device_type() == DeviceType.CUDA]
    raw.sort(key=lambda e: e.start_ns())
    span = (max(e.start_ns() + e.duration_ns() for e in raw) - raw[0].start_ns()) if raw else 0
    return [(e.name(), e.duration_ns() / 1e3) for e in raw], span / 1e3


# -- the worker: one engine, every batch size -----------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    spec: EngineSpec
    batches: tuple[int, ...] = BATCHES
    prompt_len: int = 64
    output_len: int = 64
    profile_len: int = 16
    repeats: int = 3

    @staticmethod
    def read(path: Path) -> BenchConfig:
        """The config `_run_child` wrote (JSON turns tuples into lists)."""
        raw = json.loads(path.read_text())
        spec = raw.pop("spec")
        spec["capture_sizes"] = tuple(spec["capture_sizes"])
        return BenchConfig(EngineSpec(**spec), **{**raw, "batches": tuple(raw["batches"])})


def _timed(llm: Any, texts: list[str], tokens: int) -> float:
    start = time.perf_counter()
    llm.generate(texts, greedy(tokens), use_tqdm=False)
    return time.perf_counter() - start


def inter_token_latency(llm: Any) -> tuple[float, int]:
    """(sum, count) of vLLM's own `vllm:inter_token_latency_seconds` histogram so far: the
    time between a request's successive output tokens, as the engine records it."""
    found = [m for m in llm.get_metrics() if m.name == "vllm:inter_token_latency_seconds"]
    return sum(m.sum for m in found), sum(m.count for m in found)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _step_seconds(llm: Any, texts: list[str], config: BenchConfig) -> tuple[float, float]:
    """One decode step, two ways, median over repeats: vLLM's mean inter-token latency over
    the long generates (what the engine measured per token), and from wall time
    (t(T) - t(1)) / (T - 1) (prefill removed; noisier, kept as a cross-check)."""
    by_engine, by_wall = [], []
    for _ in range(config.repeats):
        (sum_0, count_0), started = inter_token_latency(llm), time.perf_counter()
        llm.generate(texts, greedy(config.output_len), use_tqdm=False)
        full = time.perf_counter() - started
        sum_1, count_1 = inter_token_latency(llm)
        by_engine.append((sum_1 - sum_0) / max(count_1 - count_0, 1))
        by_wall.append((full - _timed(llm, texts, 1)) / (config.output_len - 1))
    return _median(by_engine), _median(by_wall)


def run_worker(config: BenchConfig) -> dict[str, Any]:
    """One engine: per batch size, decode step time (wall), tokens/s, GDN layer GPU time."""
    started = time.perf_counter()
    llm = start_engine(config.spec)
    ready_s = time.perf_counter() - started
    layer_types = json.loads((Path(config.spec.model) / "config.json").read_text())["layer_types"]
    gdn_layers = layer_types.count("linear_attention")
    results = []
    for batch in config.batches:
        texts = prompts(batch, config.prompt_len, seed=batch)
        llm.generate(texts, greedy(4), use_tqdm=False)  # warm: this batch's graphs and kernels
        step, wall_step = _step_seconds(llm, texts, config)
        kernels, span_us = profiled_kernels(
            lambda: llm.generate(texts, greedy(config.profile_len), use_tqdm=False)  # noqa: B023
        )
        windows = layer_windows(kernels)
        spans = [sum(us for _, us in window) for window in windows]
        decode_steps = config.profile_len - 1
        row = {
            "batch": batch,
            "step_ms": step * 1e3,  # vLLM's mean inter-token latency
            "decode_tok_s": batch / step,
            "wall_step_ms": wall_step * 1e3,
            "gdn_layer_us": sum(spans) / max(len(spans), 1),
            "gdn_step_us": sum(spans) / decode_steps,
            "gdn_windows": len(spans),
            "expected_windows": decode_steps * gdn_layers,
            # the whole profiled generate (prefill included): GPU busy time, its span, launches
            "gpu_busy_us": sum(us for _, us in kernels),
            "gpu_span_us": span_us,
            "gpu_activities": len(kernels),
            "first_windows": windows[:2],  # what was counted, to check the attribution
        }
        results.append(row)
    return {"spec": asdict(config.spec), "ready_s": ready_s, "gdn_layers": gdn_layers,
            "results": results}  # fmt: skip


# -- the driver --------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    import torch

    found = {"torch": torch.__version__, "cuda": str(torch.version.cuda)}
    for dist in ("vllm", "triton", "transformers"):
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            found[dist] = __import__(dist).__version__
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name(0)
    found["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    return found


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gdn-serve bench-engine", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="checkpoint folder (gdn-serve tiny-model)")
    p.add_argument("--backend", nargs="+", default=list(BACKENDS), help="'none': no plugin")
    p.add_argument("--state-dtype", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--mode", default="FULL_AND_PIECEWISE", choices=MODES)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, required=True, help="results document (JSON)")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # one engine's config
    return p


def _configs(args: argparse.Namespace) -> Iterable[BenchConfig]:
    batches = tuple(args.batch)
    base = EngineSpec(
        model=args.model, mode=args.mode, state_dtype="float32", max_num_seqs=max(batches),
        capture_sizes=tuple(sorted({*batches, 1, 2, 4})), kv_cache_gib=16.0,
        max_model_len=args.prompt_len + args.output_len + 64,
        max_num_batched_tokens=max(batches) * (args.prompt_len + 8), sample_every=64,
        count_decodes=False,
    )  # fmt: skip
    specs = [
        replace(base, backend=None if backend == "none" else backend, state_dtype=dtype)
        for dtype in args.state_dtype
        for backend in args.backend
    ]
    if "triton-fused" in args.backend:  # the cost of timing: the same engine, timing off
        specs.append(replace(base, backend="triton-fused", sample_every=0))
    for spec in specs:
        yield BenchConfig(spec, batches, args.prompt_len, args.output_len, 16, args.repeats)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        args.out.write_text(json.dumps(run_worker(BenchConfig.read(args.worker))))
        return 0
    runs = []
    for config in _configs(args):
        runs.append(_run_child(config, args.out.with_suffix(".part.json")))
        args.out.write_text(json.dumps({"env": _versions(), "runs": runs}, indent=1))
        print(render_row(runs[-1]), flush=True)
    return 0


def _run_child(config: BenchConfig, out: Path) -> dict[str, Any]:
    """One engine in a child process (a fresh CUDA context and vLLM per backend)."""
    spec_file = out.with_suffix(".spec.json")
    spec_file.write_text(json.dumps(asdict(config)))
    cmd = [sys.executable, "-m", "gdn_serve.bench.engine", "--model", config.spec.model,
           "--out", str(out), "--worker", str(spec_file)]  # fmt: skip
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        return {"spec": asdict(config.spec), "error": f"worker exited {done.returncode}"}
    return dict(json.loads(out.read_text()))


def render_row(run: dict[str, Any]) -> str:
    spec = run["spec"]
    timing = "" if spec["sample_every"] or spec["backend"] is None else ", timing off"
    name = f"{spec['backend'] or 'vllm (no plugin)'} {spec['state_dtype']}{timing}"
    if "error" in run:
        return f"{name}: {run['error']}"
    cells = [
        f"B={r['batch']}: {r['decode_tok_s']:.0f} tok/s, {r['step_ms']:.3f} ms/step, "
        f"GDN {r['gdn_step_us']:.1f} us/step"
        for r in run["results"]
    ]
    return f"{name}: " + "; ".join(cells)


if __name__ == "__main__":
    sys.exit(main())
