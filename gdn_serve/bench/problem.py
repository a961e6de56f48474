"""One benchmark shape: inputs laid out as vLLM lays them out, and one step function per kernel.

The state pool is a view of one large buffer shared by all shapes; each shape cycles through
`rotations` disjoint sets of slots (see `timing.rotations_for`). Activations are laid out as
vLLM's forward has them: one `mixed_qkvz` projection row per token (`mixed_qkv` and `z` are
views into it) and one `ba` row (`b`, `a` are views).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from gdn_serve.bench.probes import state_roundtrip
from gdn_serve.kernels.launch import LaunchConfig
from gdn_serve.kernels.reference import FusedLayerParams, HeadDims
from gdn_serve.kernels.signature import DecodeArgs, FusedArgs
from gdn_serve.kernels.triton_decode import gdn_decode
from gdn_serve.kernels.triton_fused import FusedWorkspace, gdn_fused_decode

HEAD_DIM = 128  # K = V = 128 in every Qwen3-Next / Qwen3.5 GDN layer
CONV_WIDTH = 4
NORM_EPS = 1e-6

Step = Callable[[int], object]


@dataclass(frozen=True)
class Shape:
    hv: int
    batch: int
    state_dtype: torch.dtype

    @property
    def dims(self) -> HeadDims:
        return HeadDims(hk=self.hv // 2, hv=self.hv, k=HEAD_DIM, v=HEAD_DIM)

    @property
    def conv_dim(self) -> int:
        d = self.dims
        return 2 * d.hk * d.k + d.hv * d.v

    def state_bytes(self) -> int:
        """Bytes of recurrent state one decode step reads (and writes back)."""
        return self.batch * self.hv * HEAD_DIM * HEAD_DIM * self.state_dtype.itemsize

    def decode_bytes(self) -> int:
        """Compulsory traffic of the decode core: state read + write, activations in, out."""
        io = self.batch * (self.conv_dim + 2 * self.hv + self.hv * HEAD_DIM) * 2
        return 2 * self.state_bytes() + io

    def layer_bytes(self) -> int:
        """Decode core plus conv state read + write, the z gate and the normalised output."""
        conv = 2 * self.batch * self.conv_dim * (CONV_WIDTH - 1) * 2
        return self.decode_bytes() + conv + 2 * self.batch * self.hv * HEAD_DIM * 2


class Problem:
    def __init__(self, shape: Shape, rotations: int, pool_buffer: torch.Tensor) -> None:
        self.shape, self.rotations = shape, rotations
        d, b, dev = shape.dims, shape.batch, pool_buffer.device
        bf16 = torch.bfloat16
        slots = 1 + rotations * b  # slot 0 is vLLM's null block
        numel = slots * d.hv * d.v * d.k
        self.pool = pool_buffer.view(shape.state_dtype)[:numel].view(slots, d.hv, d.v, d.k)
        self.pool.normal_(0, 0.05)
        perm = torch.randperm(rotations * b, device=dev, dtype=torch.int32) + 1
        # each rotation's row starts 32-byte aligned, as FlashInfer's kernels require
        rows = torch.zeros(rotations, -(-b // 8) * 8, device=dev, dtype=torch.int32)
        rows[:, :b] = perm.view(rotations, b)
        self.indices = rows[:, :b]
        self.qkvz = torch.randn(b, shape.conv_dim + d.hv * d.v, device=dev, dtype=bf16)
        self.mixed_qkv, z = self.qkvz.split([shape.conv_dim, d.hv * d.v], dim=-1)
        self.z = z.view(b, d.hv, d.v)
        self.ba = torch.randn(b, 2 * d.hv, device=dev, dtype=bf16)
        self.b, self.a = self.ba.chunk(2, dim=-1)
        self.a_c, self.b_c = self.a.contiguous(), self.b.contiguous()
        self.out = torch.empty(b, 1, d.hv, d.v, device=dev, dtype=bf16)
        self.out_norm = torch.empty(b, d.hv, d.v, device=dev, dtype=bf16)
        stored = torch.randn(slots, CONV_WIDTH - 1, shape.conv_dim, device=dev, dtype=bf16)
        self.conv_state = stored.transpose(1, 2)  # vLLM's default (state_len, dim) layout
        self.params = FusedLayerParams(
            conv_weight=0.1 * torch.randn(shape.conv_dim, CONV_WIDTH, device=dev, dtype=bf16),
            conv_bias=None,  # Qwen3.5's conv1d has no bias
            A_log=torch.rand(d.hv, device=dev).log(),
            dt_bias=torch.randn(d.hv, device=dev),
            norm_weight=torch.ones(d.v, device=dev, dtype=bf16),
            scale=d.k**-0.5,
            norm_eps=NORM_EPS,
        )
        self.workspace = FusedWorkspace.allocate(b, d, dev)

    def decode_args(
        self,
        r: int,
        *,
        pool: torch.Tensor | None = None,
        out: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
    ) -> DecodeArgs:
        """Rotation r's decode step on this problem's pool and output (or the ones given)."""
        p = self.params
        return DecodeArgs(
            self.mixed_qkv, self.a_c, self.b_c, p.A_log, p.dt_bias, p.scale,
            self.pool if pool is None else pool, self.out if out is None else out,
            self.indices[r] if indices is None else indices, True,
        )  # fmt: skip

    def ours(self, config: LaunchConfig) -> Step:
        return lambda r: gdn_decode(self.decode_args(r), config=config)

    def ours_fused(self, config: LaunchConfig) -> Step:
        return lambda r: gdn_fused_decode(
            self.fused_args(r), workspace=self.workspace, config=config
        )

    def fused_args(
        self,
        r: int,
        *,
        conv_state: torch.Tensor | None = None,
        pool: torch.Tensor | None = None,
        out: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
    ) -> FusedArgs:
        """Rotation r's layer step on this problem's states and output (or the ones given)."""
        return FusedArgs(
            self.mixed_qkv, self.a, self.b, self.z,
            self.conv_state if conv_state is None else conv_state,
            self.pool if pool is None else pool, self.indices[r] if indices is None else indices,
            self.out_norm if out is None else out, self.params,
        )  # fmt: skip

    @functools.cached_property
    def second_pool(self) -> torch.Tensor:
        """A pool shaped like `pool`, allocated once, for the probe's out-of-place variant."""
        return torch.empty_like(self.pool)

    def floor(self, config: LaunchConfig, *, in_place: bool = True) -> Step:
        """The probe: this step's state traffic with no decode math (see `probes`), in place or
        into a second pool of the same shape."""
        out = self.pool if in_place else self.second_pool
        return lambda r: state_roundtrip(self.pool, self.indices[r], 1.0, config, out)

    def vllm(self, vllm: SimpleNamespace) -> Step:
        return lambda r: vllm.packed_decode(*self.decode_args(r))

    def vllm_layer(self, vllm: SimpleNamespace, *, full: bool) -> Step:
        """vLLM 0.32's decode path for one GDN layer: conv update, packed decode, gated norm.
        `full` adds what its forward does around them (zero-filled output buffer, contiguous
        copies of b and a)."""
        p = self.params

        def step(r: int) -> object:
            core = self.out_norm
            a, b = self.a_c, self.b_c
            if full:
                core = torch.zeros_like(self.out_norm)
                b, a = self.b.contiguous(), self.a.contiguous()
            x = vllm.conv_update(
                self.mixed_qkv, self.conv_state, p.conv_weight, None, "silu",
                conv_state_indices=self.indices[r], validate_data=False,
            )  # fmt: skip
            vllm.packed_decode(
                *self.decode_args(r, out=core.unsqueeze(1))._replace(mixed_qkv=x, a=a, b=b)
            )
            return vllm.rmsnorm_fn(
                core, p.norm_weight, None, z=self.z, eps=NORM_EPS, group_size=None,
                norm_before_gate=True, activation="silu",
            )  # fmt: skip

        return step

    def _split_qkv(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Contiguous q, k [B, 1, HK, K] and v [B, 1, HV, V]: the split-input baselines' form."""
        d, b = self.shape.dims, self.shape.batch
        q, k, v = (
            t.contiguous()
            for t in self.mixed_qkv.split([d.hk * d.k, d.hk * d.k, d.hv * d.v], dim=-1)
        )
        return q.view(b, 1, d.hk, d.k), k.view(b, 1, d.hk, d.k), v.view(b, 1, d.hv, d.v)

    def fla(self, fla: SimpleNamespace) -> Step:
        """fla-core's fused_recurrent with in-kernel gating, V-first dense state (no pool: each
        rotation's slots are one contiguous block of the pool), new final-state tensor."""
        d, b, p = self.shape.dims, self.shape.batch, self.params
        q, k, v = self._split_qkv()
        g, beta = self.a_c.view(b, 1, d.hv), self.b_c.view(b, 1, d.hv)
        return lambda r: fla.fused_recurrent(
            q, k, v, g=g, beta=beta, scale=p.scale,
            initial_state=self.pool[1 + r * b : 1 + (r + 1) * b], output_final_state=True,
            use_qk_l2norm_in_kernel=True, use_gate_in_kernel=True, A_log=p.A_log,
            dt_bias=p.dt_bias, use_beta_sigmoid_in_kernel=True, state_v_first=True,
        )  # fmt: skip

    def flashinfer(self, fi: SimpleNamespace) -> Step:
        """FlashInfer's pretranspose decode on the same pool and slots (no null slots here)."""
        d, b, p = self.shape.dims, self.shape.batch, self.params
        q, k, v = self._split_qkv()
        a, bb = self.a_c.view(b, 1, d.hv), self.b_c.view(b, 1, d.hv)
        return lambda r: fi.decode(
            q, k, v, None, p.A_log, a, p.dt_bias, bb, scale=p.scale, output=self.out,
            use_qk_l2norm=True, initial_state=self.pool, initial_state_indices=self.indices[r],
        )  # fmt: skip
