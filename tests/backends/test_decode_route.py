"""The decode route a routed vLLM layer holds: which backend runs inside vLLM's layer, the
state layout it is handed, sampled timing, and what it publishes. Real kernels (the torch
reference, vLLM's CPU op) and the real `prometheus_client` registry; no engine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY

from gdn_serve import decode_route, metrics
from gdn_serve.backends import registry
from gdn_serve.decode_route import DecodeRoute, DecodeTimer, build_route


def test_the_fused_kernel_is_substituted_inside_vllms_layer() -> None:
    assert decode_route.layer_backend("triton-fused") == (
        "triton",
        "fused-norm-has-no-seam-in-vllm-layer",
    )
    for name in ("triton", "flashinfer", "vllm", "cpu", "reference"):
        assert decode_route.layer_backend(name) == (name, None)


def test_sample_rate_comes_from_the_environment() -> None:
    assert decode_route.sample_every({}) == decode_route.DEFAULT_SAMPLE_EVERY
    assert decode_route.sample_every({decode_route.ENV_SAMPLE_EVERY: " 1 "}) == 1
    for bad in ("0", "-3", "often"):
        with pytest.raises(ValueError, match="positive integer"):
            decode_route.sample_every({decode_route.ENV_SAMPLE_EVERY: bad})


def test_only_contract_backends_on_cpu_see_the_pool_transposed() -> None:
    assert not decode_route.transposes_pool("cpu", "cpu")
    assert decode_route.transposes_pool("cpu", "reference")
    assert not decode_route.transposes_pool("sm90", "triton")


def test_the_timer_runs_every_call_and_times_one_in_n() -> None:
    seconds: list[float] = []
    timer = DecodeTimer(every=3, on_seconds=seconds.append, cuda=False)
    ran: list[int] = []
    for _ in range(7):
        timer.run(lambda: ran.append(len(ran)))
    assert ran == list(range(7))
    assert len(seconds) == 2 and all(s >= 0 for s in seconds)


def _route(backend: str) -> DecodeRoute:
    return DecodeRoute(
        backend=backend,
        kernel=registry.BACKENDS[backend].load(),
        transpose_pool=decode_route.transposes_pool("cpu", backend),
        timer=DecodeTimer(every=1, on_seconds=lambda s: None, cuda=False),
    )


def test_both_cpu_backends_agree_on_vllms_cpu_pool() -> None:
    """vLLM's CPU pool is K-major per slot: the `cpu` backend reads it as is, the reference
    through the route's transposed view; both must then update the same states."""
    gen = torch.Generator().manual_seed(3)
    hk, hv, dim, batch = 2, 4, 32, 3
    x = torch.randn(batch, 2 * hk * dim + hv * dim, generator=gen).bfloat16()
    a, b = torch.randn(2, batch, hv, generator=gen).bfloat16()
    A_log, dt_bias = torch.randn(2, hv, generator=gen).bfloat16()
    pool = torch.randn(6, hv, dim, dim, generator=gen) * 0.3
    indices = torch.tensor([4, 0, 2], dtype=torch.int32)
    results = {}
    for backend in ("cpu", "reference"):
        state, out = pool.clone(), torch.full((batch, 1, hv, dim), 7.0).bfloat16()
        _route(backend).decode(x, a, b, A_log, dt_bias, dim**-0.5, state, out, indices, True)
        results[backend] = (state, out)
    torch.testing.assert_close(results["cpu"][1], results["reference"][1], rtol=2**-6, atol=2e-3)
    torch.testing.assert_close(results["cpu"][0], results["reference"][0], rtol=0.02, atol=0.02)
    assert torch.equal(results["cpu"][0][[0, 1, 3, 5]], pool[[0, 1, 3, 5]])
    assert not torch.allclose(results["cpu"][0][[2, 4]], pool[[2, 4]])


def test_build_route_picks_the_cpu_backend_and_publishes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(registry.ENV_BACKEND, raising=False)
    route = build_route(state_dtype="float32", head_dims=(32, 32), model="route-auto", arch="cpu")
    assert route is not None and route.backend == "cpu" and not route.transpose_pool
    labels = {"backend": "cpu", "requested": "auto", "arch": "cpu", "model": "route-auto"}
    assert (
        REGISTRY.get_sample_value("gdn_serve_backend_info", {**labels, "state_dtype": "float32"})
        == 1
    )


def test_a_forced_backend_that_cannot_run_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(registry.ENV_BACKEND, "triton")
    with pytest.raises(ValueError, match="'triton' was forced but cannot run on cpu: needs a GPU"):
        build_route(state_dtype="float32", head_dims=(32, 32), model="route-forced", arch="cpu")


def test_a_substituted_backend_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(registry.ENV_BACKEND, "triton-fused")
    route = build_route(
        state_dtype="bfloat16", head_dims=(128, 128), model="route-fused", arch="sm90"
    )
    assert route is not None and route.backend == "triton"
    assert route.timer.cuda and not route.transpose_pool
    labels = {
        "chosen": "triton-fused",
        "backend": "triton",
        "arch": "sm90",
        "model": "route-fused",
        "reason": "fused-norm-has-no-seam-in-vllm-layer",
    }
    assert REGISTRY.get_sample_value("gdn_serve_backend_fallbacks_total", labels) == 1


def test_a_state_dtype_no_backend_takes_stays_on_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's float16 state: auto leaves the layer on vLLM's path and counts it once per
    process; a forced backend is an error, as for any backend that cannot run."""
    monkeypatch.delenv(registry.ENV_BACKEND, raising=False)
    for _ in range(3):  # three layers, one record
        assert (
            build_route(state_dtype="float16", head_dims=(32, 32), model="f16", arch="cpu") is None
        )
    labels = {
        "chosen": "auto",
        "backend": "vllm-path",
        "arch": "cpu",
        "model": "f16",
        "reason": "state dtype float16",
    }
    assert REGISTRY.get_sample_value("gdn_serve_backend_fallbacks_total", labels) == 1
    monkeypatch.setenv(registry.ENV_BACKEND, "cpu")
    with pytest.raises(ValueError, match="unknown state dtype 'float16'"):
        build_route(state_dtype="float16", head_dims=(32, 32), model="f16-forced", arch="cpu")


def test_metrics_refuse_other_labels() -> None:
    with pytest.raises(ValueError, match="takes labels"):
        metrics.record(metrics.DECODE_SECONDS, 1e-5, backend="cpu")


def test_child_processes_report_through_the_relay(monkeypatch: pytest.MonkeyPatch) -> None:
    """What vLLM's CPU engine processes do under Ray Serve: they are not Ray processes, so they
    send each record to the relay their parent started, which records it in the parent."""
    monkeypatch.setenv(metrics.ENV_RELAY, "")  # restored afterwards: later tests record here
    path = metrics.start_relay()
    assert os.environ[metrics.ENV_RELAY] == path and Path(path).is_socket()
    child = (
        "from gdn_serve import metrics\n"
        "metrics.record(metrics.DECODE_SECONDS, 3e-5, backend='cpu', arch='cpu', model='relayed')\n"
    )
    subprocess.run([sys.executable, "-c", child], check=True, env=os.environ.copy(), timeout=120)
    labels = {"backend": "cpu", "arch": "cpu", "model": "relayed"}
    deadline = time.monotonic() + 10
    while REGISTRY.get_sample_value("gdn_serve_decode_seconds_count", labels) is None:
        assert time.monotonic() < deadline, "the relay never recorded the child's sample"
        time.sleep(0.05)
    assert REGISTRY.get_sample_value("gdn_serve_decode_seconds_sum", labels) == pytest.approx(3e-5)
