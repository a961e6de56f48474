"""`gdn-serve bench`: GDN decode kernels side by side at Qwen3.5 shapes, on one GPU, in one run.

Also runs as a plain script on a GPU machine (`python -m gdn_serve.bench.kernels ...`):
  1. correctness of our kernels against the float64 reference (and vLLM's) on the GPU;
  2. optionally (--tune) the launch-config sweep behind launch_table.py;
  3. CUDA-graph timings over rotating state slots (pool >> L2) of our decode kernel, vLLM's
     packed decode, fla-core's fused_recurrent (dense state), FlashInfer's pretranspose decode
     (when installed) and, per layer, our fused kernel against vLLM's conv -> decode -> norm
     sequence, with the device copy bandwidth of the run.
Results go to a JSON document (--out) and a markdown summary on stdout. CPU-side steps:
--extract-vllm pulls vLLM's kernels out of the pinned wheel; --write-table turns run documents
into launch_table.py and backends/measured.py; --report prints a run document's tables.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
import triton

from gdn_serve.bench import gpu_checks, summary, timing, tune
from gdn_serve.bench.baselines import extract_vllm, load_fla, load_flashinfer, load_vllm
from gdn_serve.bench.problem import Problem, Shape, Step
from gdn_serve.kernels.launch import LaunchConfig, device_arch, dtype_name, lookup

HVS = (32, 16, 8)  # value heads per GPU at TP = 1, 2, 4
BATCHES = (1, 8, 32, 128, 256, 512, 1024)
FLOOR_MAX_BATCH = 32  # where latency, not bandwidth, sets the time: the floor probe runs there
BANDWIDTH_BOUND_HEADS = 4096  # B * HV from which the bar asks for a share of copy bandwidth
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TABLE_PATH = Path(__file__).parents[1] / "kernels" / "launch_table.py"
MEASURED_PATH = Path(__file__).parents[1] / "backends" / "measured.py"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gdn-serve bench", description=__doc__.split("\n")[0])
    p.add_argument("--hv", type=int, nargs="+", default=list(HVS))
    p.add_argument("--batch", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--dtype", choices=list(DTYPES), nargs="+", default=list(DTYPES))
    p.add_argument("--tune", action="store_true", help="sweep launch configs per shape")
    p.add_argument("--vllm-src", type=Path, help="folder made by --extract-vllm")
    p.add_argument("--out", type=Path, help="write the results document (JSON) here")
    p.add_argument("--extract-vllm", type=Path, metavar="WHEEL", help="vllm==0.32.0 wheel")
    p.add_argument("--write-table", type=Path, nargs="+", metavar="RUN_JSON")
    p.add_argument("--report", type=Path, nargs="+", metavar="RUN_JSON", help="tables of runs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.extract_vllm:
        if not args.vllm_src:
            print("--extract-vllm needs --vllm-src (where to put the modules)", file=sys.stderr)
            return 2
        extract_vllm(args.extract_vllm, args.vllm_src)
        return 0
    if args.write_table:
        runs = [json.loads(p.read_text()) for p in args.write_table]
        tune.write_table(runs, TABLE_PATH)
        summary.write_measured(runs, MEASURED_PATH)
        return 0
    if args.report:
        print("\n\n".join(render_markdown(json.loads(p.read_text())) for p in args.report))
        return 0
    if not torch.cuda.is_available():
        print("gdn-serve bench needs a CUDA GPU (this machine has none)", file=sys.stderr)
        return 2
    return _run(args)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _environment(vllm_src: Path | None, baselines: SimpleNamespace) -> dict:
    props = torch.cuda.get_device_properties(0)
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        "gpu": props.name,
        "arch": device_arch(torch.device("cuda", 0)),
        "sms": props.multi_processor_count,
        "l2_bytes": props.L2_cache_size,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "driver": smi.stdout.strip(),
        "vllm_kernels": (vllm_src / "SOURCE").read_text().strip() if vllm_src else "not loaded",
        "fla": _version("fla-core") if baselines.fla else "not installed",
        "flashinfer": _version("flashinfer-python") if baselines.flashinfer else "not installed",
        "copy_gbs": timing.copy_bandwidth_gbs(),
    }


def _shapes(args: argparse.Namespace) -> list[Shape]:
    return [
        Shape(hv, batch, DTYPES[dtype])
        for dtype in args.dtype
        for hv in args.hv
        for batch in args.batch
    ]


def _run(args: argparse.Namespace) -> int:
    baselines = SimpleNamespace(
        vllm=load_vllm(args.vllm_src) if args.vllm_src else None,
        fla=load_fla(),
        flashinfer=load_flashinfer(),
    )
    vllm = baselines.vllm
    env = _environment(args.vllm_src, baselines)
    doc: dict = {"env": env, "checks": [], "tuning": [], "results": []}

    def save() -> None:
        if args.out:
            args.out.write_text(json.dumps(doc, indent=1))

    shapes = _shapes(args)
    l2 = doc["env"]["l2_bytes"]
    rotations = {s: timing.rotations_for(s.state_bytes(), l2) for s in shapes}
    # one pool buffer for every shape: the largest pool any of them needs
    need = max((1 + rotations[s] * s.batch) * s.state_bytes() // s.batch for s in shapes)
    buffer = torch.empty(need, dtype=torch.uint8, device="cuda")

    # every config the tuner may pick is checked against the float64 reference in this run
    for dtype in dict.fromkeys(s.state_dtype for s in shapes):
        problem = Problem(Shape(32, 8, dtype), 2, buffer)
        for kernel, check in (
            ("decode", gpu_checks.check_decode),
            ("fused", gpu_checks.check_fused),
        ):
            doc["checks"] += [
                check(problem, vllm if i == 0 else None, c)
                for i, c in enumerate(tune.CANDIDATES[kernel])
            ]
        if baselines.flashinfer is not None:
            doc["checks"].append(gpu_checks.check_flashinfer_adapter(problem))
    ok = all(gpu_checks.passed(c) for c in doc["checks"])
    print(json.dumps([c for c in doc["checks"] if not gpu_checks.passed(c)] or "all checks passed",
                     indent=1), flush=True)  # fmt: skip
    save()

    for shape in shapes:
        problem = Problem(shape, rotations[shape], buffer)
        doc["results"] += _bench_shape(problem, doc, args.tune, baselines)
        print(f"done hv={shape.hv} batch={shape.batch} {shape.state_dtype}", flush=True)
        save()
    print(render_markdown(doc))
    return 0 if ok else 1


def _configs(problem: Problem, doc: dict, tune_now: bool) -> dict[str, LaunchConfig]:
    s, env = problem.shape, doc["env"]
    steps = {"decode": problem.ours, "fused": problem.ours_fused}
    if not tune_now:
        return {k: lookup(k, env["arch"], s.state_dtype, s.hv, s.batch) for k in steps}
    chosen = {}
    for kernel, make in steps.items():
        base = {"arch": env["arch"], "gpu": env["gpu"], "kernel": kernel,
                "dtype": dtype_name(s.state_dtype), "hv": s.hv, "batch": s.batch}  # fmt: skip

        def time_config(c: LaunchConfig, make: Callable[[LaunchConfig], Step] = make) -> float:
            return _time_or_nan(make(c), problem.rotations, f"{c} at {s}")

        chosen[kernel], records = tune.tune_shape(time_config, base)
        doc["tuning"] += records
    return chosen


def _bench_shape(
    problem: Problem, doc: dict, tune_now: bool, baselines: SimpleNamespace
) -> list[dict]:
    configs = _configs(problem, doc, tune_now)
    s = problem.shape
    runs: dict[str, tuple[Step, int]] = {
        "ours": (problem.ours(configs["decode"]), s.decode_bytes()),
        "ours-fused-layer": (problem.ours_fused(configs["fused"]), s.layer_bytes()),
    }
    if baselines.vllm is not None:
        vllm = baselines.vllm
        runs["vllm"] = (problem.vllm(vllm), s.decode_bytes())
        runs["vllm-layer"] = (problem.vllm_layer(vllm, full=True), s.layer_bytes())
        runs["vllm-layer-3-kernels"] = (problem.vllm_layer(vllm, full=False), s.layer_bytes())
    if baselines.fla is not None:
        runs["fla"] = (problem.fla(baselines.fla), s.decode_bytes())
    if baselines.flashinfer is not None:
        runs["flashinfer"] = (problem.flashinfer(baselines.flashinfer), s.decode_bytes())
    copy_gbs = doc["env"]["copy_gbs"]
    results = []
    for name, (step, nbytes) in runs.items():
        us = _time_or_nan(step, problem.rotations, f"{name} at {s}")
        results.append(_result(name, s, us, 100 * nbytes / (us * 1e3) / copy_gbs,
                               configs["fused" if "fused" in name else "decode"]
                               if name.startswith("ours") else None))  # fmt: skip
    if s.batch <= FLOOR_MAX_BATCH:
        results.append(_floor(problem, copy_gbs, in_place=True))
    if s.batch * s.hv >= BANDWIDTH_BOUND_HEADS:
        results += [_floor(problem, copy_gbs, in_place=p) for p in (True, False)]
    return results


def _result(name: str, s: Shape, us: float, pct: float, config: LaunchConfig | None) -> dict:
    return {
        "kernel": name, "hv": s.hv, "batch": s.batch, "dtype": dtype_name(s.state_dtype),
        "us": us, "pct_copy_bw": pct, "config": list(vars(config).values()) if config else None,
    }  # fmt: skip


def _floor(problem: Problem, copy_gbs: float, *, in_place: bool) -> dict:
    """The fastest the state traffic alone runs, over every one-tile grid the tuner tries:
    in place ("floor") or into another pool ("floor-copy")."""
    s = problem.shape
    name = "floor" if in_place else "floor-copy"
    timed = [
        (
            _time_or_nan(
                problem.floor(c, in_place=in_place), problem.rotations, f"{name} {c} at {s}"
            ),
            c,
        )
        for c in tune.DECODE_CANDIDATES
    ]
    us, config = min(timed, key=lambda t: (t[0] != t[0], t[0]))
    return _result(name, s, us, 100 * 2 * s.state_bytes() / (us * 1e3) / copy_gbs, config)


def _time_or_nan(step: Step, rotations: int, what: str) -> float:
    """One failing kernel (a baseline that does not run on this GPU, a config that does not
    fit) is reported as NaN with its error, not allowed to end the run."""
    try:
        return timing.graph_time_us(step, rotations)
    except Exception as err:
        print(f"FAILED {what}: {err!r}", file=sys.stderr, flush=True)
        torch.cuda.synchronize()
        return float("nan")


def render_markdown(doc: dict) -> str:
    """The run as two markdown tables: the decode core (µs, % of the copy bandwidth, our
    speedup) and one GDN layer's decode step (conv + core + gated norm)."""
    env = doc["env"]
    by: dict[tuple, dict[str, dict]] = {}
    for r in doc["results"]:
        by.setdefault((r["dtype"], r["hv"], r["batch"]), {})[r["kernel"]] = r
    lines = [
        f"{env['gpu']} ({env['arch']}, {env['sms']} SMs, L2 {env['l2_bytes'] >> 20} MiB), "
        f"copy bandwidth {env['copy_gbs']:.0f} GB/s; torch {env['torch']}, triton "
        f"{env['triton']}, CUDA {env['cuda']}, driver {env['driver']}; {env['date']}",
        "",
        "| state | HV | B | ours µs | vLLM µs | FLA µs | FlashInfer µs | ours %BW | vLLM %BW "
        "| FLA %BW | FlashInfer %BW | vs vLLM | vs FLA | vs FlashInfer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (dtype, hv, batch), k in sorted(by.items()):
        decode = ("ours", "vllm", "fla", "flashinfer")
        us = " | ".join(_us(k, n) for n in decode)
        bw = " | ".join(_pct(k, n) for n in decode)
        ratios = " | ".join(_ratio(k, n, "ours") for n in decode[1:])
        lines.append(f"| {dtype} | {hv} | {batch} | {us} | {bw} | {ratios} |")
    lines += [
        "",
        "| state | HV | B | ours µs | floor µs | ours / floor | 2x vLLM µs | 2x vLLM / floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (dtype, hv, batch), k in sorted(by.items()):
        if "floor" in k and batch <= FLOOR_MAX_BATCH:
            floor, half_vllm = k["floor"]["us"], k["vllm"]["us"] / 2 if "vllm" in k else math.nan
            lines.append(
                f"| {dtype} | {hv} | {batch} | {_us(k, 'ours')} | {floor:.2f} "
                f"| {k['ours']['us'] / floor:.2f} | {half_vllm:.2f} | {half_vllm / floor:.2f} |"
            )
    lines += [
        "",
        "| state | HV | B | ours %BW | floor in place %BW | floor to another pool %BW |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {dtype} | {hv} | {batch} | {_pct(k, 'ours')} | {_pct(k, 'floor')} "
        f"| {_pct(k, 'floor-copy')} |"
        for (dtype, hv, batch), k in sorted(by.items())
        if "floor-copy" in k
    ]
    lines += [
        "",
        "| state | HV | B | ours fused µs | vLLM layer µs | vLLM 3 kernels µs "
        "| vs vLLM layer | vs 3 kernels |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (dtype, hv, batch), k in sorted(by.items()):
        us = " | ".join(
            _us(k, n) for n in ("ours-fused-layer", "vllm-layer", "vllm-layer-3-kernels")
        )
        lines.append(
            f"| {dtype} | {hv} | {batch} | {us} | {_ratio(k, 'vllm-layer', 'ours-fused-layer')} "
            f"| {_ratio(k, 'vllm-layer-3-kernels', 'ours-fused-layer')} |"
        )
    return "\n".join(lines)


def _us(by: dict[str, dict], name: str) -> str:
    return f"{by[name]['us']:.2f}" if name in by else "—"


def _pct(by: dict[str, dict], name: str) -> str:
    return f"{by[name]['pct_copy_bw']:.1f}" if name in by else "—"


def _ratio(by: dict[str, dict], base: str, ours: str) -> str:
    if base not in by or ours not in by:
        return "—"
    return f"{by[base]['us'] / by[ours]['us']:.2f}x"


if __name__ == "__main__":
    sys.exit(main())
