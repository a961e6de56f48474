"""Launch-config tuning of our kernels, and the writer of `launch_table.py`.

On a GPU, `tune_shape` times every candidate config at one shape. `write_table` turns the
tuning records of one or more benchmark runs into `launch_table.py`: per arch, shape and state
dtype the config whose worst slowdown against each GPU's own best is smallest (so two GPUs of
one arch, e.g. H100 and H200, share one table), with the GPUs, dates and versions beside it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

from gdn_serve.bench.literal import python_literal
from gdn_serve.kernels.launch import LaunchConfig

# (block_v, num_warps): from many one-warp programs (latency at small batch) to few wide ones
# (bandwidth at large batch). V = 128, so block_v <= 128. The 2026-11-21 sweep of 15 such
# configs on H100 and H200 never picked the ones left out here.
_ONE_TILE = ((2, 1), (4, 1), (8, 1), (16, 1), (16, 2), (32, 1), (32, 4), (64, 8), (128, 8))
DECODE_CANDIDATES: tuple[LaunchConfig, ...] = tuple(LaunchConfig(bv, w) for bv, w in _ONE_TILE)
# The fused kernel also prefetches state where registers allow, and has the mode with one
# program per key head (whole V, no arrivals), with or without the next head in flight.
_PREFETCHED = ((2, 1), (4, 1), (8, 1), (16, 1), (16, 2), (32, 4))
FUSED_CANDIDATES = (
    tuple(LaunchConfig(bv, w) for bv, w in _ONE_TILE)
    + tuple(LaunchConfig(bv, w, prefetch=True) for bv, w in _PREFETCHED)
    + tuple(LaunchConfig(128, w, True) for w in (4, 8, 16))
    + (LaunchConfig(128, 16, True, prefetch=True),)
)
CANDIDATES = {"decode": DECODE_CANDIDATES, "fused": FUSED_CANDIDATES}

Record = dict  # one timing: arch, gpu, kernel, dtype, hv, batch, block_v, num_warps, us


def tune_shape(
    time_config: Callable[[LaunchConfig], float], base: Record
) -> tuple[LaunchConfig, list[Record]]:
    """Time every candidate of base["kernel"]; returns the fastest and one record each."""
    records = [{**base, **asdict(c), "us": time_config(c)} for c in CANDIDATES[base["kernel"]]]
    best = min(records, key=lambda rec: (rec["us"] != rec["us"], rec["us"]))  # NaN = failed
    return _config(best), records


def _config(rec: Record) -> LaunchConfig:
    return LaunchConfig(
        rec["block_v"], rec["num_warps"], rec.get("per_key_head", False), rec.get("prefetch", False)
    )


def _current(rec: Record) -> bool:
    """False for a record of a launch mode the kernels no longer have (a run document keeps
    what was measured; 2026-11-22's runs also timed a persistent decode grid, since removed)."""
    return not rec.get("persistent")


def choose(records: Iterable[Record]) -> dict:
    """TABLE[(arch, kernel, dtype, hv)][batch] = LaunchConfig fields as a tuple, minimising
    the worst slowdown over the GPUs that measured the shape (a failed timing is NaN and never
    wins)."""
    by_shape: dict[tuple, dict[tuple, dict[str, float]]] = defaultdict(dict)
    for rec in filter(_current, records):
        key = (rec["arch"], rec["kernel"], rec["dtype"], rec["hv"], rec["batch"])
        config = tuple(asdict(_config(rec)).values())
        by_shape[key].setdefault(config, {})[rec["gpu"]] = rec["us"]
    table: dict[tuple[str, str, str, int], dict[int, tuple]] = {}
    for (arch, kernel, dtype, hv, batch), timings in sorted(by_shape.items()):
        gpus = set.intersection(*(set(t) for t in timings.values()))
        best = {
            g: min((t[g] for t in timings.values() if not math.isnan(t[g])), default=math.inf)
            for g in gpus
        }
        table.setdefault((arch, kernel, dtype, hv), {})[batch] = min(
            timings, key=lambda c: _worst(timings[c], best, gpus)
        )
    return table


_TABLE_TEMPLATE = '''"""Tuned launch configs; do not edit. Written by
`python -m gdn_serve.bench.kernels --write-table RUN.json...` from GPU runs made with
`bench --tune --out RUN.json`.

TABLE[(arch, kernel, state dtype, HV)][batch] = LaunchConfig fields in order (block_v,
num_warps, per_key_head, prefetch). PROVENANCE says where and with what it was
measured. An arch without an entry borrows the nearest measured arch; DEFAULT is for no table.
"""

PROVENANCE: dict[str, dict[str, str]] = {provenance}
TABLE: dict[tuple[str, str, str, int], dict[int, tuple[int, int, bool, bool]]] = {table}
DEFAULT: dict[str, tuple[int, int, bool, bool]] = {default}
'''


def _worst(timing: dict[str, float], best: dict[str, float], gpus: set[str]) -> float:
    slowdowns = [timing[g] / best[g] for g in gpus]
    return math.inf if any(math.isnan(x) for x in slowdowns) else max(slowdowns)


def write_table(runs: list[dict], path: Path) -> None:
    """Write launch_table.py from benchmark result documents (bench.py --out)."""
    records = [rec for run in runs for rec in run["tuning"]]
    provenance = {
        run["env"]["arch"] + ":" + run["env"]["gpu"]: {
            k: str(v) for k, v in run["env"].items() if k != "arch"
        }
        for run in runs
    }
    default = {kernel: tuple(asdict(LaunchConfig(32, 4)).values()) for kernel in CANDIDATES}
    text = _TABLE_TEMPLATE.format(
        provenance=python_literal(provenance),
        table=python_literal(choose(records)),
        default=python_literal(default),
    )
    path.write_text(text)
