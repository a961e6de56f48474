"""Launch configuration of our Triton kernels per device arch, shape and state dtype.

The numbers live in `launch_table.py`, written from tuning runs on GPUs (`gdn-serve bench --tune`,
then `--write-table`), with the GPU, date and versions recorded beside them. Lookup takes the
measured entry nearest to the asked shape; an arch without a table borrows the nearest measured
arch's table. The table was tuned at V = 128 (every Qwen3.5 GDN layer); for another V an entry
is fitted to it (a block of V rows never exceeds V).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

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

    def fitted(self, v: int) -> LaunchConfig:
        """This config for value heads of V rows: a block, or a whole head per program, is at
        most V rows."""
        block = v if self.per_key_head else min(self.block_v, v)
        return self if block == self.block_v else replace(self, block_v=block)

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


def _by_batch(kernel: str, arch: str, dtype: str, hv: int) -> dict[int, LaunchConfig] | None:
    """The table row for this kernel, arch (or its nearest measured one), dtype and nearest HV."""
    source = _table_arch(arch)
    by_hv = {
        key[3]: by_batch
        for key, by_batch in launch_table.TABLE.items()
        if key[:3] == (source, kernel, dtype)
    }
    if not by_hv:
        return None
    return {b: LaunchConfig(*fields) for b, fields in by_hv[_nearest(list(by_hv), hv)].items()}


@functools.cache
def lookup(
    kernel: str, arch: str, state_dtype: torch.dtype, hv: int, batch: int, v: int = 128
) -> LaunchConfig:
    """The tuned config for `kernel` ('decode' or 'fused') at this shape, or the default.
    Cached: the serving path asks once per call with the same few shapes."""
    by_batch = _by_batch(kernel, arch, dtype_name(state_dtype), hv)
    if by_batch is None:
        return LaunchConfig(*launch_table.DEFAULT[kernel]).fitted(v)
    return by_batch[_nearest(list(by_batch), batch)].fitted(v)


def configs_for(
    kernel: str, arch: str, state_dtype: torch.dtype, hv: int, v: int = 128
) -> tuple[LaunchConfig, ...]:
    """Every config `lookup` can return for this kernel and shape, whatever the batch: what a
    warm-up must compile before CUDA graphs are captured."""
    by_batch = _by_batch(kernel, arch, dtype_name(state_dtype), hv)
    found = by_batch.values() if by_batch else [LaunchConfig(*launch_table.DEFAULT[kernel])]
    return tuple(dict.fromkeys(config.fitted(v) for config in found))
