"""Make PyPI's torchvision importable on CPU-only torch.

The problem: PyPI's x86-64 torchvision wheels are CUDA builds. On the CPU build of torch their
native library (`torchvision/_C.so`, linked against libtorch_cuda) does not load; torchvision
handles that for every op but two: `_meta_registrations.py` registers fake kernels for
`torchvision::nms` and `torchvision::qnms` without checking that the ops exist, so
`import torchvision` raises "operator torchvision::nms does not exist". vLLM's Qwen3.5 model
module imports torchvision (through transformers' Qwen2-VL image processor), so a CPU vLLM
cannot even load a text-only Qwen3.5 model.

The fix: just before torchvision imports `_meta_registrations`, and only if the native library
did not define them, declare the schemas of those two ops (the same schemas torchvision's C++
declares) with a kernel that raises a clear error. Nothing on a text-only LLM path calls them.
Where a working torchvision is installed (CUDA images, or a CPU wheel from PyTorch's own index)
the ops already exist and this does nothing.

`python -m gdn_serve.compat.torchvision_cpu --install` writes a `.pth` file into the current
environment's site-packages so the hook is in place in every process of the environment (Ray
workers and vLLM engine processes included). The hook itself imports nothing heavy: torch is
touched only when torchvision is being imported anyway.
"""

from __future__ import annotations

# Imported at every interpreter start-up in the environment (the .pth file): keep it light.
# (importlib.abc alone would pull in importlib.resources: ~9 ms on every start.)
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import importlib.machinery
    from collections.abc import Sequence
    from pathlib import Path
    from types import ModuleType

PTH_NAME = "gdn_serve-torchvision-cpu.pth"
# Loaded by the `.pth` file at interpreter start-up.
PTH_LINE = "import gdn_serve.compat.torchvision_cpu as _m; _m.install()\n"
_TRIGGER = "torchvision._meta_registrations"
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: Any = None  # keeps the torch.library.Library alive for the life of the process


class _Hook:
    """A sys.meta_path finder that runs `define_missing_ops` when torchvision reaches its meta
    registrations."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == _TRIGGER:
            define_missing_ops()
        return None  # never loads anything itself


def _unavailable(*_args: object, **_kwargs: object) -> Any:
    raise NotImplementedError(
        "torchvision's native ops are unavailable: PyPI's torchvision is a CUDA build and this "
        "is CPU-only torch (see gdn_serve/compat/torchvision_cpu.py)"
    )


def define_missing_ops() -> list[str]:
    """Declare the torchvision ops that torchvision's native library failed to define."""
    global _library
    import torch

    missing = [name for name in _SCHEMAS if not hasattr(torch.ops.torchvision, name)]
    if missing:
        _library = _library or torch.library.Library("torchvision", "FRAGMENT")
        for name in missing:
            _library.define(_SCHEMAS[name])
            _library.impl(name, _unavailable, "CompositeExplicitAutograd")
    return missing


def install() -> None:
    """Put the hook on sys.meta_path once per process."""
    if not any(isinstance(finder, _Hook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Hook())


def pth_path() -> Path:
    import sysconfig
    from pathlib import Path

    return Path(sysconfig.get_paths()["purelib"]) / PTH_NAME


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install", action="store_true", help="write the .pth hook file")
    args = parser.parse_args(argv)
    if args.install:
        pth_path().write_text(PTH_LINE)
        print(f"wrote {pth_path()}")


if __name__ == "__main__":
    main()
