"""Which GDN decode backend runs on which device arch, and why.

Pure data and pure functions. This module imports neither torch, triton nor vLLM: the operator,
which plans deployments for remote GPU nodes and has none of those packages, shares these rules
with the serving runtime. The runtime adds what only the local machine can know (which packages
import) through `available`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gdn_serve.backends import measured

KNOWN_BACKENDS: tuple[str, ...] = (
    "triton-fused",
    "triton",
    "flashinfer",
    "vllm",
    "cpu",
    "reference",
)
STATE_DTYPES: tuple[str, ...] = ("float32", "bfloat16")
AUTO = "auto"
# The arch name of a machine without a GPU: the local stack's, and a CPU deployment's.
CPU_ARCH = "cpu"

_ARCH = re.compile(r"^sm(\d{2,3})$")


@dataclass(frozen=True)
class Resolution:
    requested: str  # "auto" or a backend name
    active: str  # the backend that will run
    reason: str  # one line: why


@dataclass(frozen=True)
class Requirement:
    """What a backend needs from the device, independent of the local install."""

    on_cpu: bool  # runs on a machine without a GPU
    min_sm: int | None  # lowest GPU arch (e.g. 80 for sm80); None: no GPU support
    max_sm: int | None  # highest GPU arch it is built for; None: no upper bound
    state_dtypes: tuple[str, ...]
    head_dims: tuple[int, ...] | None  # K and V sizes it handles; None: any power of two
    package: str | None  # the PyPI package it needs beyond the serving stack


# Why each bound: our Triton kernels keep bf16 in registers (sm80+); FlashInfer's GDN decode is
# CuTe-DSL code built for Hopper and datacenter Blackwell only (sm90, sm100, sm103), K = V = 128;
# vLLM's packed decode kernel is Triton (sm80+, the arches vLLM's Qwen3.5 path supports); the CPU
# backend is vLLM's C++ op, which needs a bf16 state buffer on the model's side but accepts both.
REQUIREMENTS: dict[str, Requirement] = {
    "triton-fused": Requirement(False, 80, None, STATE_DTYPES, None, "triton"),
    "triton": Requirement(False, 80, None, STATE_DTYPES, None, "triton"),
    "flashinfer": Requirement(False, 90, 103, STATE_DTYPES, (128,), "flashinfer-python"),
    "vllm": Requirement(False, 80, None, STATE_DTYPES, None, "vllm"),
    "cpu": Requirement(True, None, None, STATE_DTYPES, None, "vllm"),
    "reference": Requirement(True, 0, None, STATE_DTYPES, None, None),
}


@dataclass(frozen=True)
class ArchPreference:
    order: tuple[str, ...]  # best first
    source: str  # where the order comes from: a benchmark or an argument


# A measured arch orders its backends from `measured.py` (written from the benchmark runs):
# first those never slower than vLLM's kernel by more than PARITY at any measured shape, by
# geometric-mean speedup, then the rest by the same. A serving batch moves across shapes with
# load, so one bad shape outweighs a good average. Archs without a measurement here use the
# orders below; docs/kernels.md reasons them.
PARITY = 0.97
PREFERENCES: dict[str, ArchPreference] = {
    CPU_ARCH: ArchPreference(("cpu", "reference"), "CPU: vLLM's C++ op, the torch reference last"),
    "sm89": ArchPreference(
        ("triton", "triton-fused", "vllm", "reference"),
        "unmeasured: reasoned from sm89's ~1 TB/s, 128 SMs, 72 MB L2 (docs/kernels.md)",
    ),
}
_UNLISTED_GPU = ArchPreference(
    ("triton", "triton-fused", "vllm", "reference"),
    "unmeasured arch: our portable Triton kernel first, vLLM's kernel as fallback",
)


def arch_sm(arch: str) -> int | None:
    """The SM number of a GPU arch name ('sm90' -> 90); None for 'cpu'. Rejects anything else."""
    if arch == CPU_ARCH:
        return None
    match = _ARCH.match(arch)
    if match is None:
        raise ValueError(f"unknown arch {arch!r}: expected 'cpu' or 'sm<major><minor>' like 'sm90'")
    return int(match.group(1))


def check_backend(
    name: str,
    arch: str,
    *,
    state_dtype: str = "float32",
    head_dims: tuple[int, int] | None = None,
    available: frozenset[str] | None = None,
) -> tuple[bool, str]:
    """Can backend `name` run on `arch`? Returns (ok, reason); the reason says what failed."""
    req = REQUIREMENTS[name]
    sm = arch_sm(arch)
    if sm is None and not req.on_cpu:
        return False, "needs a GPU"
    if sm is not None and (req.min_sm is None or sm < req.min_sm):
        return False, "no GPU support" if req.min_sm is None else f"needs sm{req.min_sm}+"
    if sm is not None and req.max_sm is not None and sm > req.max_sm:
        return False, f"built for sm{req.min_sm}..sm{req.max_sm} only"
    if state_dtype not in req.state_dtypes:
        return False, f"state dtype {state_dtype} unsupported"
    if head_dims is not None and not _head_dims_ok(req, head_dims):
        return False, f"head dims K={head_dims[0]}, V={head_dims[1]} unsupported"
    if available is not None and name not in available:
        return False, f"not importable here (needs {req.package})"
    return True, f"runs on {arch} with a {state_dtype} state"


def _head_dims_ok(req: Requirement, head_dims: tuple[int, int]) -> bool:
    if req.head_dims is not None:
        return all(d in req.head_dims for d in head_dims)
    return all(d > 0 and d & (d - 1) == 0 for d in head_dims)


def layer_backend(chosen: str, fusable: bool) -> tuple[str, str | None]:
    """(the backend that runs inside vLLM's layer, why it is not `chosen`, or None).

    The fused kernel takes the whole layer step, gated norm included; it needs vLLM's path that
    runs the norm inside the core op, which exists for Qwen3.5's layout with a bf16 model only.
    Elsewhere its unfused sibling runs. Shared by the plugin (which logs and counts the
    substitution) and the operator (whose status must name what the replicas run)."""
    if chosen == "triton-fused" and not fusable:
        return "triton", "fused-layer-needs-qwen3.5-layout-and-bf16"
    return chosen, None


def measured_preference(arch: str, state_dtype: str) -> ArchPreference | None:
    """The order `measured.SPEEDUP` gives `arch` for this state dtype (None: not measured)."""
    speedup = measured.SPEEDUP.get(arch, {}).get(state_dtype)
    if not speedup:
        return None
    ranked = sorted(speedup, key=lambda b: (speedup[b][1] >= PARITY, speedup[b][0]), reverse=True)
    summary = ", ".join(f"{b} {speedup[b][0]:.2f}x (worst {speedup[b][1]:.2f}x)" for b in ranked)
    return ArchPreference(
        (*ranked, *(b for b in ("reference",) if b not in ranked)),
        f"measured on {measured.SOURCE[arch]}: vs vLLM {summary}",
    )


def preference_for(arch: str, state_dtype: str = "float32") -> ArchPreference:
    """The backend order for an arch: measured where we measured, reasoned otherwise."""
    measured_order = measured_preference(arch, state_dtype)
    if measured_order is not None:
        return measured_order
    if arch in PREFERENCES:
        return PREFERENCES[arch]
    return PREFERENCES[CPU_ARCH] if arch_sm(arch) is None else _UNLISTED_GPU


def resolve_backend(
    arch: str,
    requested: str = AUTO,
    *,
    state_dtype: str = "float32",
    available: frozenset[str] | None = None,
    head_dims: tuple[int, int] | None = None,
) -> Resolution:
    """Pick the backend for `arch`, or check a forced one.

    `available=None` assumes every backend's package imports on that arch's image (the
    operator's case: it plans for remote nodes). An unknown name, or a forced backend that cannot
    run on `arch`, raises ValueError saying why.
    """
    if state_dtype not in STATE_DTYPES:
        raise ValueError(f"unknown state dtype {state_dtype!r}: expected one of {STATE_DTYPES}")
    arch_sm(arch)
    if requested != AUTO:
        return _resolve_forced(arch, requested, state_dtype, available, head_dims)
    pref = preference_for(arch, state_dtype)
    skipped: list[str] = []
    for name in pref.order:
        ok, why = check_backend(
            name, arch, state_dtype=state_dtype, head_dims=head_dims, available=available
        )
        if ok:
            tail = f"; skipped {', '.join(skipped)}" if skipped else ""
            return Resolution(
                AUTO, name, f"best for {arch}, {state_dtype} state ({pref.source}){tail}"
            )
        skipped.append(f"{name} ({why})")
    raise ValueError(f"no GDN backend can run on {arch}: {'; '.join(skipped)}")


def _resolve_forced(
    arch: str,
    requested: str,
    state_dtype: str,
    available: frozenset[str] | None,
    head_dims: tuple[int, int] | None,
) -> Resolution:
    if requested not in KNOWN_BACKENDS:
        raise ValueError(
            f"unknown GDN backend {requested!r}: expected 'auto' or one of {KNOWN_BACKENDS}"
        )
    ok, why = check_backend(
        requested, arch, state_dtype=state_dtype, head_dims=head_dims, available=available
    )
    if not ok:
        raise ValueError(f"GDN backend {requested!r} was forced but cannot run on {arch}: {why}")
    return Resolution(requested, requested, f"forced; {why}")
