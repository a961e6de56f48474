"""The runtime registry: local arch, availability, env forcing, logging once, and running the
backends that this CPU machine can run."""

from __future__ import annotations

import logging

import pytest
import torch

from gdn_serve import envs
from gdn_serve.backends import registry, report, rules
from gdn_serve.kernels.reference import gdn_decode_reference
from gdn_serve.kernels.signature import DecodeArgs


def test_registry_declares_every_known_backend() -> None:
    assert tuple(registry.BACKENDS) == rules.KNOWN_BACKENDS


def test_local_arch_comes_from_the_compute_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    assert registry.local_arch() == "sm89"


def test_local_arch_without_a_gpu_is_cpu() -> None:
    assert torch.cuda.is_available() or registry.local_arch() == "cpu"


def test_the_arch_order_decides_among_backends_that_verify() -> None:
    # every backend's package counted as installed: the first of sm90's order wins
    resolution = rules.resolve_backend("sm90", available=frozenset(registry.BACKENDS))
    assert resolution.active == rules.preference_for("sm90").order[0]


def test_a_fused_backend_is_not_a_packed_decode() -> None:
    with pytest.raises(TypeError, match="fused layer kernel"):
        registry.BACKENDS["triton-fused"].kernel()


def test_env_var_forces_and_the_argument_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(envs.BACKEND.name, "reference")
    assert registry.select_backend(arch="cpu").active == "reference"
    assert registry.select_backend("cpu", arch="cpu").active == "cpu"
    monkeypatch.setenv(envs.BACKEND.name, "triton")
    with pytest.raises(ValueError, match="needs a GPU"):
        registry.select_backend(arch="cpu")


def test_the_decision_is_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(registry, "_logged", set())
    monkeypatch.delenv(envs.BACKEND.name, raising=False)
    with caplog.at_level(logging.INFO, logger=registry.__name__):
        for _ in range(3):
            registry.select_backend(arch="sm90")
    assert len(caplog.records) == 1
    assert "sm90" in caplog.text and rules.preference_for("sm90").order[0] in caplog.text


def test_availability_reflects_installed_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        registry.importlib.util, "find_spec", lambda name: None if name == "flashinfer" else 1
    )
    available = registry.available_backends()
    assert "flashinfer" not in available
    assert {"triton", "vllm", "reference"} <= available


def test_report_names_the_arch_each_verdict_and_the_choice() -> None:
    text = report.describe_local_choice("reference")
    assert f"device arch: {registry.local_arch()}" in text
    for name in rules.KNOWN_BACKENDS:
        assert name in text
    assert "-> reference: forced" in text


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_cpu_backends_run_the_decode_contract(backend: str) -> None:
    """Both CPU backends against the float64 reference, null slots included. vLLM's CPU op reads
    each slot K-major (as vLLM's CPU prefill writes it), so it is compared on the transpose."""
    fn = registry.BACKENDS[backend].kernel()
    gen = torch.Generator().manual_seed(0)
    hk, hv, dim, batch = 2, 4, 32, 3
    x = torch.randn(batch, 2 * hk * dim + hv * dim, generator=gen).bfloat16()
    a, b = torch.randn(2, batch, hv, generator=gen).bfloat16()
    A_log, dt_bias = torch.randn(2, hv, generator=gen).bfloat16().float()
    state = torch.randn(5, hv, dim, dim, generator=gen) * 0.3
    indices = torch.tensor([3, 0, 1], dtype=torch.int32)
    k_major = backend == "cpu"

    pool = state.transpose(-1, -2).contiguous() if k_major else state.clone()
    out = torch.full((batch, 1, hv, dim), 7.0, dtype=torch.bfloat16)
    fn(DecodeArgs(x, a, b, A_log, dt_bias, dim**-0.5, pool, out, indices, True))

    pool64, out64 = state.double(), torch.empty(batch, 1, hv, dim, dtype=torch.float64)
    args64 = (x.double(), a.double(), b.double(), A_log.double(), dt_bias.double())
    gdn_decode_reference(DecodeArgs(*args64, dim**-0.5, pool64, out64, indices, True))
    got = pool.transpose(-1, -2) if k_major else pool
    torch.testing.assert_close(out.double(), out64, rtol=2**-7, atol=1e-3)
    # vLLM's CPU op keeps part of its arithmetic in bf16: its state is a few bf16 steps off.
    torch.testing.assert_close(got.double(), pool64, rtol=0.02, atol=0.02 if k_major else 1e-5)
    assert torch.all(out[1] == 0)
    assert torch.equal(got[[0, 2, 4]], state[[0, 2, 4]])
