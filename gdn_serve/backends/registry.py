"""The runtime registry of GDN decode backends, in the style of flash-linear-attention's
`BackendRegistry`: each backend declares a name, a lazily imported entry point, the package that
makes it available and a verifier. The deciding logic lives in `rules` (pure, shared with the
operator): its per-arch order is the priority. This module adds what only the local machine
knows: its arch, which packages import, and the environment.

Selection: `envs.BACKEND` (or the `requested` argument, e.g. from config) forces a backend;
otherwise the first backend of the arch's order that passes its verifier wins. The decision is
logged once per distinct outcome.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from gdn_serve import envs
from gdn_serve.backends import rules

if TYPE_CHECKING:  # the kernels (and torch) are imported only when a backend is used
    from gdn_serve.kernels.signature import PackedDecode

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """A backend's functions, imported. `prepare(args)` (fused: `prepare(args, workspace)`)
    returns the kernel for that call's layout and batch size, which the route keeps per batch
    size; `warm(args[, workspace])` launches every launch config the kernel can pick."""

    fused: bool
    prepare: Callable[..., Callable[[Any], object]]
    warm: Callable[..., None] | None


@dataclass(frozen=True)
class Backend:
    name: str
    module: str  # imported only when the backend is used
    entry: str  # function in `module`: a PackedDecode, or (fused) a FusedDecode
    fused: bool  # True: the whole decode step (conv + delta rule + norm); False: vLLM's contract
    prepare: str | None = None  # function in `module`, see `Loaded`; None: `entry` as it is
    warm: str | None = None  # function in `module`, see `Loaded`; None: nothing to warm

    @property
    def package(self) -> str | None:
        """The import name whose presence makes this backend available (None: always)."""
        pypi = rules.REQUIREMENTS[self.name].package
        return {"flashinfer-python": "flashinfer"}.get(pypi, pypi) if pypi else None

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

    def kernel(self) -> PackedDecode:
        """The backend's `PackedDecode` (imported now). A fused backend's entry takes the
        whole layer step, not the packed-decode arguments: asking for it here is a bug."""
        if self.fused:
            raise TypeError(f"{self.name} is a fused layer kernel, not a PackedDecode")
        return cast("PackedDecode", getattr(importlib.import_module(self.module), self.entry))

    def load(self) -> Loaded:
        module = importlib.import_module(self.module)
        entry = getattr(module, self.entry)
        prepare = getattr(module, self.prepare) if self.prepare else lambda *_: entry
        return Loaded(self.fused, prepare, getattr(module, self.warm) if self.warm else None)


_K = "gdn_serve.kernels"
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "triton-fused",
            f"{_K}.triton_fused",
            "gdn_fused_decode",
            fused=True,
            prepare="prepare_fused",
            warm="warm_fused",
        ),
        Backend(
            "triton",
            f"{_K}.triton_decode",
            "gdn_decode",
            fused=False,
            prepare="prepare_decode",
            warm="warm_decode",
        ),
        Backend("flashinfer", f"{_K}.adapters", "flashinfer_decode", fused=False),
        Backend("vllm", f"{_K}.adapters", "vllm_decode", fused=False),
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
    return (requested or envs.BACKEND.get()).strip().lower()


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
