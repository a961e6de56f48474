"""The CPU side of the benchmark: tuning merge, table lookup, generated modules, vLLM extraction,
slot rotation, the report, and the GPU checks run through the interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from gdn_serve.bench import gpu_checks, summary, tune
from gdn_serve.bench import kernels as bench
from gdn_serve.bench.baselines import VLLM_FILES, extract_vllm
from gdn_serve.bench.problem import Problem, Shape
from gdn_serve.bench.timing import rotations_for
from gdn_serve.kernels import launch, launch_table
from gdn_serve.kernels.launch import LaunchConfig


def _record(gpu: str, block_v: int, us: float, batch: int = 1) -> dict:
    return {"arch": "sm90", "gpu": gpu, "kernel": "decode", "dtype": "float32", "hv": 32,
            "batch": batch, "block_v": block_v, "num_warps": 1, "per_key_head": False,
            "us": us}  # fmt: skip


def test_choose_minimises_the_worst_slowdown_over_gpus() -> None:
    # block 4 is best on A by a hair and 50 % slower on B; block 8 is within 10 % on both
    records = [
        _record("A", 4, 1.00), _record("A", 8, 1.10),
        _record("B", 4, 3.00), _record("B", 8, 2.00),
    ]  # fmt: skip
    table = tune.choose(records)
    assert table[("sm90", "decode", "float32", 32)][1] == (8, 1, False, False)


def test_a_failed_timing_never_wins() -> None:
    records = [_record("A", 4, float("nan")), _record("A", 8, 5.0)]
    assert tune.choose(records)[("sm90", "decode", "float32", 32)][1] == (8, 1, False, False)


def test_written_table_round_trips_through_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    run = {
        "env": {"arch": "sm90", "gpu": "A", "date": "2026-11-21", "triton": "3.6.0"},
        "tuning": [_record("A", 4, 1.0, batch=1), _record("A", 32, 1.0, batch=1024)],
    }
    path = tmp_path / "table.py"
    tune.write_table([run], path)
    namespace: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    assert namespace["PROVENANCE"]["sm90:A"]["triton"] == "3.6.0"
    monkeypatch.setattr(launch_table, "TABLE", namespace["TABLE"])
    launch.lookup.cache_clear()  # cached lookups of the real table
    request.addfinalizer(launch.lookup.cache_clear)
    assert launch.lookup("decode", "sm90", torch.float32, 32, 2) == LaunchConfig(4, 1)
    assert launch.lookup("decode", "sm90", torch.float32, 16, 600) == LaunchConfig(32, 1)
    # an unmeasured arch borrows the nearest measured one; an untuned kernel gets the default
    assert launch.lookup("decode", "sm89", torch.float32, 32, 1) == LaunchConfig(4, 1)
    assert launch.lookup("fused", "sm90", torch.float32, 32, 1) == LaunchConfig(
        *launch_table.DEFAULT["fused"]
    )


def test_extract_vllm_takes_the_kernels_from_the_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "vllm-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in VLLM_FILES:
            zf.writestr(name, f"# {name}\n")
        zf.writestr(
            "vllm/v1/attention/backends/utils.py", "import x\nPAD_SLOT_ID = -1\nNULL_BLOCK_ID = 0\n"
        )
    out = tmp_path / "src"
    extract_vllm(wheel, out)
    for name in VLLM_FILES:
        assert (out / name).read_text() == f"# {name}\n"
    assert (out / "vllm/v1/attention/backends/utils.py").read_text() == (
        "PAD_SLOT_ID = -1\nNULL_BLOCK_ID = 0\n"
    )
    assert (out / "SOURCE").read_text().strip() == wheel.name
    assert "current_platform" in (out / "vllm/platforms/__init__.py").read_text()


def test_extract_vllm_refuses_a_wheel_without_the_slot_constants(tmp_path: Path) -> None:
    wheel = tmp_path / "vllm.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in (*VLLM_FILES, "vllm/v1/attention/backends/utils.py"):
            zf.writestr(name, "")
    with pytest.raises(ValueError, match="NULL_BLOCK_ID"):
        extract_vllm(wheel, tmp_path / "src")


@pytest.mark.parametrize(
    ("launch_bytes", "expected"), [(1 << 20, 200), (1 << 31, 2), (1, 512), (50 << 20, 4)]
)
def test_rotations_span_four_l2s(launch_bytes: int, expected: int) -> None:
    assert rotations_for(launch_bytes, l2_bytes=50 << 20) == expected


def test_records_of_removed_launch_modes_are_ignored() -> None:
    # a run document keeps every timing; a persistent-grid record (mode since removed) must not
    # be read as the one-tile config of the same block size
    records = [_record("A", 8, 2.0), {**_record("A", 4, 1.0), "persistent": 16}]
    records.append(_record("A", 4, 3.0))
    assert tune.choose(records)[("sm90", "decode", "float32", 32)][1] == (8, 1, False, False)


def test_speedups_summarise_every_backend_against_vllm() -> None:
    def result(kernel: str, us: float, batch: int) -> dict:
        return {"kernel": kernel, "dtype": "float32", "hv": 32, "batch": batch, "us": us}

    run = {
        "env": {"arch": "sm90", "gpu": "A", "date": "2026-11-22"},
        "results": [
            result("vllm", 4.0, 1), result("ours", 2.0, 1), result("flashinfer", float("nan"), 1),
            result("vllm-layer", 9.0, 1), result("ours-fused-layer", 3.0, 1),
            result("vllm", 100.0, 1024), result("ours", 125.0, 1024),
        ],
    }  # fmt: skip
    table = summary.speedups([run])["sm90"]["float32"]
    assert table["triton"] == (1.265, 0.8, 2)  # sqrt(2 x 0.8): the mean, and the worst shape
    assert table["triton-fused"] == (3.0, 3.0, 1)  # layer against layer
    assert table["vllm"] == (1.0, 1.0, 2)
    assert "flashinfer" not in table  # a failed timing (NaN) is no measurement
    assert summary.sources([run]) == {"sm90": "A 2026-11-22"}


RUNS = Path(__file__).parents[2] / "docs" / "gpu-runs"
DTYPE_NAMES = ("float32", "bfloat16")


def test_report_renders_a_committed_run_with_its_floor_table() -> None:
    doc = json.loads((RUNS / "2026-11-22-h100-float32.json").read_text())
    text = bench.render_markdown(doc)
    assert text.startswith("NVIDIA H100 80GB HBM3 (sm90, 132 SMs")
    by = {(r["kernel"], r["hv"], r["batch"]): r["us"] for r in doc["results"]}
    ours, floor, vllm = by[("ours", 32, 8)], by[("floor", 32, 8)], by[("vllm", 32, 8)]
    row = (
        f"| float32 | 32 | 8 | {ours:.2f} | {floor:.2f} | {ours / floor:.2f} "
        f"| {vllm / 2:.2f} | {vllm / 2 / floor:.2f} |"
    )
    assert row in text.splitlines()


def test_report_renders_the_large_batch_floors() -> None:
    doc = json.loads((RUNS / "2026-11-22-h200-floors.json").read_text())
    pct = {(r["kernel"], r["dtype"], r["hv"], r["batch"]): r["pct_copy_bw"] for r in doc["results"]}
    row = (
        f"| float32 | 32 | 1024 | {pct[('ours', 'float32', 32, 1024)]:.1f} "
        f"| {pct[('floor', 'float32', 32, 1024)]:.1f} "
        f"| {pct[('floor-copy', 'float32', 32, 1024)]:.1f} |"
    )
    assert row in bench.render_markdown(doc).splitlines()


def test_generated_modules_are_ruff_formatted_as_written(tmp_path: Path) -> None:
    runs = [json.loads((RUNS / f"2026-11-22-h200-{d}.json").read_text()) for d in DTYPE_NAMES]
    table, measured = tmp_path / "launch_table.py", tmp_path / "measured.py"
    tune.write_table(runs, table)
    summary.write_measured(runs, measured)
    check = [sys.executable, "-m", "ruff", "format", "--check", "--diff", str(table), str(measured)]
    assert subprocess.run(check, capture_output=True, text=True).returncode == 0
    namespace: dict = {}
    exec(compile(measured.read_text(), str(measured), "exec"), namespace)
    assert namespace["SPEEDUP"] == summary.speedups(runs)


def test_gpu_checks_run_through_the_interpreter() -> None:
    # the checks the benchmark runs before timing, here on CPU tensors: same null-slot inputs
    # for kernel and float64 reference (the output bound is the GPU's half bf16 step, which the
    # interpreter's truncation can exceed, so only the state and slot semantics are asserted)
    problem = Problem(Shape(8, 4, torch.float32), 2, torch.empty(64 << 20, dtype=torch.uint8))
    for check in (gpu_checks.check_decode, gpu_checks.check_fused):
        result = check(problem, None, LaunchConfig(128, 4))
        assert result["state_excess"] <= 0 and result["null_rows_zero"], result
    assert problem.indices[1].data_ptr() % 32 == 0  # rows aligned for FlashInfer
