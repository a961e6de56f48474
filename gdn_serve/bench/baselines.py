"""The public kernels we measure against, loaded without their engines.

vLLM's Triton kernels are pure Python inside the pinned `vllm==0.32.0` wheel. `extract_vllm`
copies the few modules the decode path needs out of a downloaded wheel into a scratch folder
(never into this repository) and writes the small shims they import in place of the engine
(`vllm.triton_utils`, `vllm.platforms.current_platform`, ...); `load_vllm` imports them from there.
fla-core and flashinfer-python are ordinary packages; each loader returns None where its package
is not installed, and the benchmark leaves that column empty.
"""

from __future__ import annotations

import importlib
import re
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

# Verbatim from the wheel: the packed decode kernel, causal_conv1d_update and the gated RMSNorm.
VLLM_FILES = (
    "vllm/third_party/flash_linear_attention/ops/fused_recurrent.py",
    "vllm/third_party/flash_linear_attention/ops/op.py",
    "vllm/third_party/flash_linear_attention/ops/utils.py",
    "vllm/third_party/flash_linear_attention/ops/layernorm_guard.py",
    "vllm/model_executor/layers/mamba/ops/causal_conv1d.py",
)
_PACKAGES = (
    "vllm",
    "vllm/third_party",
    "vllm/third_party/flash_linear_attention",
    "vllm/third_party/flash_linear_attention/ops",  # empty: the real one imports every op
    "vllm/model_executor",
    "vllm/model_executor/layers",
    "vllm/model_executor/layers/mamba",
    "vllm/model_executor/layers/mamba/ops",
    "vllm/model_executor/warmup",
    "vllm/utils",
    "vllm/v1",
    "vllm/v1/attention",
    "vllm/v1/attention/backends",
)
# What those modules import from the engine, reduced to what the decode path uses.
_SHIMS = {
    "vllm/triton_utils/__init__.py": (
        "import triton\nimport triton.language as tl\n"
        "import triton.language.extra.libdevice as tldevice\n"
    ),
    "vllm/platforms/__init__.py": (
        "import torch\n\n\nclass _Cuda:\n"
        "    def is_cuda_alike(self):\n        return True\n\n"
        "    def is_cpu(self):\n        return False\n\n"
        "    def is_arch_support_pdl(self):\n"
        "        return torch.cuda.get_device_capability()[0] >= 9  # as vLLM's CudaPlatform\n\n"
        "    def num_compute_units(self, device_id=0):\n"
        "        return torch.cuda.get_device_properties(device_id).multi_processor_count\n\n\n"
        "current_platform = _Cuda()\n"
    ),
    "vllm/utils/math_utils.py": (
        "def cdiv(a, b):\n    return -(a // -b)\n\n\n"
        "def next_power_of_2(n):\n    return 1 if n < 1 else 1 << (n - 1).bit_length()\n"
    ),
    "vllm/utils/platform_utils.py": (
        "from vllm.platforms import current_platform\n\n\n"
        "def num_compute_units(device_id=0):\n"
        "    return current_platform.num_compute_units(device_id)\n"
    ),
    # The JIT-warmup machinery only matters for vLLM's start-up; the kernel call path never uses
    # it beyond subclassing.
    "vllm/model_executor/warmup/jit_warmup.py": (
        "class VllmJitKernel:\n    def __class_getitem__(cls, item):\n        return cls\n"
    ),
    "vllm/model_executor/warmup/jit_warmup_triton_helper.py": (
        "class TritonPointerInputVariant:\n    pass\n\n\nclass TritonWarmupTensor:\n    pass\n\n\n"
        "def triton_scalar_specialization_rep(x):\n    return x\n"
    ),
}
_SLOT_CONSTANTS = re.compile(r"^(NULL_BLOCK_ID|PAD_SLOT_ID) = .*$", re.M)


def extract_vllm(wheel: Path, into: Path) -> None:
    """Write vLLM's decode-path modules from `wheel` plus the shims into `into` (a sys.path
    root). Runs anywhere: no GPU, no vLLM install."""
    with zipfile.ZipFile(wheel) as zf:
        files = {name: zf.read(name).decode() for name in VLLM_FILES}
        utils_src = zf.read("vllm/v1/attention/backends/utils.py").decode()
    # the null-slot constants come from the wheel itself, not from us
    lines = [m.group(0) for m in _SLOT_CONSTANTS.finditer(utils_src)]
    if len(lines) != 2:
        raise ValueError(f"{wheel.name}: NULL_BLOCK_ID / PAD_SLOT_ID not found")
    files["vllm/v1/attention/backends/utils.py"] = "\n".join(lines) + "\n"
    for package in _PACKAGES:
        files.setdefault(f"{package}/__init__.py", "")
    files.update(_SHIMS)
    files["SOURCE"] = f"{wheel.name}\n"  # what the benchmark reports as the vLLM version
    for name, text in files.items():
        path = into / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def load_vllm(root: Path) -> SimpleNamespace:
    """vLLM's packed decode, causal_conv1d_update and rmsnorm_fn from an `extract_vllm` folder."""
    if "vllm" in sys.modules and not str(sys.modules["vllm"].__file__).startswith(str(root)):
        raise RuntimeError("a full vLLM is already imported; run the benchmark without it")
    sys.path.insert(0, str(root))
    fla_ops = "vllm.third_party.flash_linear_attention.ops"
    return SimpleNamespace(
        packed_decode=importlib.import_module(
            f"{fla_ops}.fused_recurrent"
        ).fused_recurrent_gated_delta_rule_packed_decode,
        conv_update=importlib.import_module(
            "vllm.model_executor.layers.mamba.ops.causal_conv1d"
        ).causal_conv1d_update,
        rmsnorm_fn=importlib.import_module(f"{fla_ops}.layernorm_guard").rmsnorm_fn,
    )


def load_fla() -> SimpleNamespace | None:
    """fla-core's fused_recurrent_gated_delta_rule, or None where fla-core is not installed."""
    try:
        module = importlib.import_module("fla.ops.gated_delta_rule")
    except ImportError:
        return None
    return SimpleNamespace(fused_recurrent=module.fused_recurrent_gated_delta_rule)


def load_flashinfer() -> SimpleNamespace | None:
    """FlashInfer's pool-indexed `gated_delta_rule_decode_pretranspose`, or None."""
    try:
        module = importlib.import_module("flashinfer.gdn_decode")
    except Exception as err:  # not installed, or its native parts fail to load: say which
        print(f"FlashInfer not loaded: {err!r}", file=sys.stderr, flush=True)
        return None
    return SimpleNamespace(decode=module.gated_delta_rule_decode_pretranspose)
