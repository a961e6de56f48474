"""Launch configuration of our Triton kernels per device arch, shape and state dtype.

The numbers live in `launch_table.py`, written by the tuner (`bench.py --tune`) on a GPU, with
the GPU, date and versions recorded beside them. Lookup takes the measured entry nearest to the
asked shape; an arch without a table borrows the nearest measured arch's table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gdn_serve.kernels import launch_table


@dataclass(frozen=True)
class LaunchConfig:
    block_v: int  # rows of the [V, K] state one program owns; V // block_v programs per head
    num_warps: int

    def check(self, v: int) -> None:
        if self.block_v <= 0 or v % self.block_v or self.block_v & (self.block_v - 1):
            raise ValueError(f"block_v={self.block_v} must be a power of two dividing V={v}")


def device_arch(device: torch.device) -> str:
    """'cpu' or 'sm<major><minor>' from the device's compute capability."""
    if device.type != "cuda":
        return "cpu"
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm{major}{minor}"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _nearest(keys: list[int], want: int) -> int:
    """The key nearest to `want` on a log scale (batch and head counts grow geometrically)."""
    return min(keys, key=lambda key: (abs(math.log2(key) - math.log2(max(want, 1))), -key))


def _arch_table(arch: str) -> dict:
    tables = launch_table.TABLE
    if arch in tables:
        return tables[arch]
    measured = [a for a in tables if a.startswith("sm")]
    if not measured:
        return {}
    sm = int(arch[2:]) if arch.startswith("sm") else 0
    return tables[min(measured, key=lambda a: abs(int(a[2:]) - sm))]


def lookup(kernel: str, arch: str, state_dtype: torch.dtype, hv: int, batch: int) -> LaunchConfig:
    """The tuned config for `kernel` ('decode' or 'fused') at this shape, or the default."""
    entries = _arch_table(arch).get(kernel, {}).get(dtype_name(state_dtype))
    if not entries:
        return LaunchConfig(*launch_table.DEFAULT[kernel])
    by_batch = entries[_nearest(list(entries), hv)]
    return LaunchConfig(*by_batch[_nearest(list(by_batch), batch)])
