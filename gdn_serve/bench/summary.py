"""What the backend registry learns from benchmark runs: per arch and state dtype, how fast each
backend is against vLLM's own kernel, over every shape and GPU measured.

`write_measured` turns run documents (`bench --out`) into `gdn_serve/backends/measured.py`,
pure data that `backends.rules` orders backends by. A fused backend is compared layer against
layer (our one launch against vLLM's conv -> decode -> norm sequence), the others kernel
against kernel.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from gdn_serve.bench.literal import python_literal

# backend -> (its result in a run document, the vLLM result it is compared with)
COMPARED = {
    "triton": ("ours", "vllm"),
    "triton-fused": ("ours-fused-layer", "vllm-layer"),
    "flashinfer": ("flashinfer", "vllm"),
    "vllm": ("vllm", "vllm"),
}


def speedups(runs: list[dict]) -> dict[str, dict[str, dict[str, tuple[float, float, int]]]]:
    """SPEEDUP[arch][state dtype][backend] = (geometric mean, worst, shapes) of vLLM's time over
    the backend's, across every (GPU, HV, batch) where both ran."""
    ratios: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for run in runs:
        times: dict[tuple, dict[str, float]] = defaultdict(dict)
        for r in run["results"]:
            times[(r["dtype"], r["hv"], r["batch"])][r["kernel"]] = r["us"]
        for (dtype, _, _), by_kernel in times.items():
            for backend, (ours, base) in COMPARED.items():
                ratio = by_kernel.get(base, math.nan) / by_kernel.get(ours, math.nan)
                if not math.isnan(ratio):
                    ratios[(run["env"]["arch"], dtype, backend)].append(ratio)
    table: dict[str, dict[str, dict[str, tuple[float, float, int]]]] = {}
    for (arch, dtype, backend), values in sorted(ratios.items()):
        geo = math.exp(sum(map(math.log, values)) / len(values))
        entry = (round(geo, 3), round(min(values), 3), len(values))
        table.setdefault(arch, {}).setdefault(dtype, {})[backend] = entry
    return table


def sources(runs: list[dict]) -> dict[str, str]:
    """SOURCE[arch]: the GPUs and dates the numbers come from."""
    seen: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        seen[run["env"]["arch"]].add(f"{run['env']['gpu']} {run['env']['date']}")
    return {arch: ", ".join(sorted(names)) for arch, names in sorted(seen.items())}


_TEMPLATE = '''"""Measured speed of each GDN decode backend against vLLM's kernel; do not edit.
Written by `python -m gdn_serve.bench.kernels --write-table RUN.json...` (`bench/summary.py`).

SPEEDUP[arch][state dtype][backend] = (geometric mean, worst, shapes measured) of vLLM's time
over the backend's; `backends.rules` orders the backends of a measured arch by it.
"""

SOURCE: dict[str, str] = {source}
SPEEDUP: dict[str, dict[str, dict[str, tuple[float, float, int]]]] = {speedup}
'''


def write_measured(runs: list[dict], path: Path) -> None:
    path.write_text(
        _TEMPLATE.format(
            source=python_literal(sources(runs)), speedup=python_literal(speedups(runs))
        )
    )
