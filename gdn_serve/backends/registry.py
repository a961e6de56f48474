"""The runtime registry of GDN decode backends, in the style of flash-linear-attention's
`BackendRegistry`: each backend declares a name, a lazily imported entry point, the package that
makes it available, a priority and a verifier. The deciding logic lives in `rules` (pure, shared
with the operator); this module adds what only the local machine knows: its arch, which packages
import, and the environment.

Selection: `GDN_SERVE_BACKEND` (or the `requested` argument, e.g. from config) forces a backend;
otherwise the highest-priority backend that passes its verifier on the local arch wins. The
decision is logged once per distinct outcome.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gdn_serve.backends import rules

ENV_BACKEND = "GDN_SERVE_BACKEND"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    name: str
    module: str  # imported only when the backend is used
    entry: str  # function in `module`
    fused: bool  # True: the whole decode core (conv + delta rule + norm); False: vLLM's contract

    @property
    def package(self) -> str | None:
        """The import name whose presence makes this backend available (None: always)."""
        pypi = rules.REQUIREMENTS[self.name].package
        return {"flashinfer-python": "flashinfer"}.get(pypi, pypi) if pypi else None

    def priority(self, arch: str, state_dtype: str = "float32") -> int:
        """Higher runs first: the arch's measured (or reasoned) order from `rules`."""
        order = rules.preference_for(arch, state_dtype).order
        return len(order) - order.index(self.name) if self.name in order else 0

    def verify(
        self,
        arch: str,
        state_dtype: str,
        head_dims: tuple[int, int] | None = None,
        available: frozenset[str] | None = None,
    ) -> tuple[bool, str]:
        return rules.check_backend(
            self.name, arch, state_dtype=state_dtype, head_dims=head_dims, available=available
        )

    def load(self) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module), self.entry)


_K = "gdn_serve.kernels"
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("triton-fused", f"{_K}.triton_fused", "gdn_fused_decode", fused=True),
        Backend("triton", f"{_K}.triton_decode", "gdn_decode", fused=False),
        Backend("flashinfer", f"{_K}.adapters", "flashinfer_decode", fused=False),
        Backend(
            "vllm",
            "vllm.third_party.flash_linear_attention.ops.fused_recurrent",
            "fused_recurrent_gated_delta_rule_packed_decode",
            fused=False,
        ),
        Backend("cpu", f"{_K}.adapters", "vllm_cpu_decode", fused=False),
        Backend("reference", f"{_K}.reference", "gdn_decode_reference", fused=False),
    )
}


def local_arch() -> str:
    """'cpu' or 'sm<major><minor>' of the local device, from its compute capability."""
    import torch

    from gdn_serve.kernels.launch import device_arch

    if not torch.cuda.is_available():
        return "cpu"
    return device_arch(torch.device("cuda", torch.cuda.current_device()))


def available_backends() -> frozenset[str]:
    """Backends whose package is installed here (found, not imported: importing vLLM or
    FlashInfer takes seconds and may initialise CUDA)."""
    return frozenset(
        b.name
        for b in BACKENDS.values()
        if b.package is None or importlib.util.find_spec(b.package) is not None
    )


def requested_backend(requested: str | None = None) -> str:
    """`requested` (config) over GDN_SERVE_BACKEND, normalised; 'auto' when neither is set."""
    return (requested or os.environ.get(ENV_BACKEND) or rules.AUTO).strip().lower()


_logged: set[tuple[str, rules.Resolution]] = set()


def select_backend(
    requested: str | None = None,
    *,
    state_dtype: str = "float32",
    head_dims: tuple[int, int] | None = None,
    arch: str | None = None,
) -> rules.Resolution:
    """Resolve the backend for this machine. `requested` (config) wins over GDN_SERVE_BACKEND;
    both default to 'auto'. A forced backend that cannot run here raises ValueError saying why."""
    where = arch or local_arch()
    resolution = rules.resolve_backend(
        where,
        requested_backend(requested),
        state_dtype=state_dtype,
        available=available_backends(),
        head_dims=head_dims,
    )
    if (where, resolution) not in _logged:
        _logged.add((where, resolution))
        logger.info(
            "GDN decode backend on %s: %s (requested %s): %s",
            where,
            resolution.active,
            resolution.requested,
            resolution.reason,
        )
    return resolution
