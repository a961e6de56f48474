"""PyPI's CUDA-built torchvision imports on CPU torch in every process of the environment."""

from __future__ import annotations

import subprocess
import sys

from gdn_serve.compat.torchvision_cpu import PTH_LINE, pth_path

PROBE = """
import torch, torchvision
try:
    torch.ops.torchvision.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
except NotImplementedError as exc:
    print("unavailable:", exc)
import vllm.model_executor.models.qwen3_5
print("qwen3_5 ok")
"""


def test_setup_installed_the_hook_for_every_interpreter() -> None:
    assert pth_path().read_text() == PTH_LINE


def test_a_fresh_interpreter_imports_torchvision_and_vllms_qwen35() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, check=True
    )
    assert "unavailable: torchvision's native ops are unavailable" in done.stdout
    assert "qwen3_5 ok" in done.stdout
