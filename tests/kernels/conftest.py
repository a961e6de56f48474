"""Run our Triton kernels through Triton's CPU interpreter: this machine has no GPU.

Triton picks interpreter or compiler when `@triton.jit` runs (when a kernel module is imported)
and checks the setting again at launch, so the `triton_kernels` fixture imports fresh copies of
the kernel modules with the variable set and keeps it set while its tests run. Tests take the
kernels from the fixture, never from a module-level import. The variable is restored afterwards,
leaving the rest of the suite (vLLM) as it would be without these tests. Triton writes its cache
under the project's .cache/, never the home directory.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

KERNEL_MODULES = (
    "gdn_serve.kernels.triton_math",
    "gdn_serve.kernels.triton_decode",
    "gdn_serve.kernels.triton_fused",
)
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "triton"


@pytest.fixture(scope="module")
def triton_kernels() -> Iterator[SimpleNamespace]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        mp.setenv("TRITON_CACHE_DIR", str(CACHE))
        # A jit function snapshots the globals it calls at decoration: a reload would keep
        # compiled-mode helpers, so drop every kernel module and import them anew.
        for name in KERNEL_MODULES:
            sys.modules.pop(name, None)
        yield SimpleNamespace(
            decode=importlib.import_module("gdn_serve.kernels.triton_decode"),
            fused=importlib.import_module("gdn_serve.kernels.triton_fused"),
        )
