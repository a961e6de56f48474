"""Launch configuration of our Triton kernels per device arch, shape and state dtype.

The numbers live in `launch_table.py`, written from tuning runs on GPUs (`bench.py --tune`,
then `--write-table`), with the GPU, date and versions recorded beside them. Lookup takes the
measured entry nearest to the asked shape; an arch without a table borrows the nearest measured
arch's table.
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
    # fused kernel only: one program per (sequence, key head) looping over its value heads
    # with whole V (block_v == V), so that nothing crosses programs
    per_key_head: bool = False
    # fused kernel only: issue the state load before the q/k conv (one head per program), or
    # the next head's before this one computes (per key head); costs registers
    prefetch: bool = False

    def check(self, v: int) -> None:
        if self.block_v <= 0 or v % self.block_v or self.block_v & (self.block_v - 1):
            raise ValueError(f"block_v={self.block_v} must be a power of two dividing V={v}")
        if self.per_key_head and self.block_v != v:
            raise ValueError(f"per_key_head needs block_v == V ({v}), got {self.block_v}")


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


def _table_arch(arch: str) -> str | None:
    """`arch` if it was measured, else the measured GPU arch nearest to it (None: none)."""
    measured = {key[0] for key in launch_table.TABLE}
    if arch in measured:
        return arch
    sm = int(arch[2:]) if arch.startswith("sm") else 0
    return min(measured, key=lambda a: abs(int(a[2:]) - sm), default=None)


def lookup(kernel: str, arch: str, state_dtype: torch.dtype, hv: int, batch: int) -> LaunchConfig:
    """The tuned config for `kernel` ('decode' or 'fused') at this shape, or the default."""
    source, dtype = _table_arch(arch), dtype_name(state_dtype)
    by_hv = {
        key[3]: by_batch
        for key, by_batch in launch_table.TABLE.items()
        if key[:3] == (source, kernel, dtype)
    }
    if not by_hv:
        return LaunchConfig(*launch_table.DEFAULT[kernel])
    by_batch = by_hv[_nearest(list(by_hv), hv)]
    return LaunchConfig(*by_batch[_nearest(list(by_batch), batch)])
