"""The decode route a routed vLLM layer holds: which backend runs inside vLLM's layer, the
state layout it is handed, sampled timing, and what it publishes. Real kernels (the torch
reference, vLLM's CPU op) and the real `prometheus_client` registry; no engine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from prometheus_client import REGISTRY

from gdn_serve import envs, metrics
from gdn_serve.backends import registry, rules
from gdn_serve.kernels.signature import DecodeArgs, FusedArgs
from gdn_serve.plugin import route as decode_route
from gdn_serve.plugin.route import DecodeRoute, LayerFacts, build_route
from gdn_serve.plugin.timing import DecodeTimer


def test_the_fused_kernel_runs_where_vllms_norm_in_op_path_exists() -> None:
    assert rules.layer_backend("triton-fused", fusable=True) == ("triton-fused", None)
    assert rules.layer_backend("triton-fused", fusable=False) == (
        "triton",
        "fused-layer-needs-qwen3.5-layout-and-bf16",
    )
    for name in ("triton", "flashinfer", "vllm", "cpu", "reference"):
        assert rules.layer_backend(name, fusable=False) == (name, None)


def test_only_contract_backends_on_cpu_see_the_pool_transposed() -> None:
    assert not decode_route.transposes_pool("cpu", "cpu")
    assert decode_route.transposes_pool("cpu", "reference")
    assert not decode_route.transposes_pool("sm90", "triton")


def _route(backend: str, loaded: registry.Loaded | None = None, **kw: Any) -> DecodeRoute:
    return DecodeRoute(
        backend=backend,
        loaded=loaded or registry.BACKENDS[backend].load(),
        transpose_pool=decode_route.transposes_pool("cpu", backend),
        timer=DecodeTimer(every=1, on_seconds=lambda s, b: None, cuda=False),
        max_batch=8,
        **kw,
    )


def facts(
    model: str, state_dtype: str = "float32", dims: int = 32, fusable: bool = False
) -> LayerFacts:
    return LayerFacts(state_dtype, (dims, dims), model, fusable, max_batch=8)


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
        _route(backend).decode(
            DecodeArgs(x, a, b, A_log, dt_bias, dim**-0.5, state, out, indices, True)
        )
        results[backend] = (state, out)
    torch.testing.assert_close(results["cpu"][1], results["reference"][1], rtol=2**-6, atol=2e-3)
    torch.testing.assert_close(results["cpu"][0], results["reference"][0], rtol=0.02, atol=0.02)
    assert torch.equal(results["cpu"][0][[0, 1, 3, 5]], pool[[0, 1, 3, 5]])
    assert not torch.allclose(results["cpu"][0][[2, 4]], pool[[2, 4]])


def test_build_route_picks_the_cpu_backend_and_publishes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(envs.BACKEND.name, raising=False)
    route = build_route(facts("route-auto"), arch="cpu")
    assert route is not None and route.backend == "cpu" and not route.transpose_pool
    labels = {"backend": "cpu", "requested": "auto", "arch": "cpu", "model": "route-auto"}
    assert (
        REGISTRY.get_sample_value("gdn_serve_backend_info", {**labels, "state_dtype": "float32"})
        == 1
    )


def test_a_forced_backend_that_cannot_run_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(envs.BACKEND.name, "triton")
    with pytest.raises(ValueError, match="'triton' was forced but cannot run on cpu: needs a GPU"):
        build_route(facts("route-forced"), arch="cpu")


def test_a_substituted_backend_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(envs.BACKEND.name, "triton-fused")
    fused = build_route(facts("route-fused-ok", "bfloat16", 128, fusable=True), arch="sm90")
    assert fused is not None and fused.backend == "triton-fused" and fused.fused
    route = build_route(facts("route-fused", "bfloat16", 128), arch="sm90")
    assert route is not None and route.backend == "triton" and not route.fused
    assert route.timer.cuda and not route.transpose_pool
    labels = {
        "chosen": "triton-fused",
        "backend": "triton",
        "arch": "sm90",
        "model": "route-fused",
        "reason": "fused-layer-needs-qwen3.5-layout-and-bf16",
    }
    assert REGISTRY.get_sample_value("gdn_serve_backend_fallbacks_total", labels) == 1


def test_a_state_dtype_no_backend_takes_stays_on_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's float16 state: auto leaves the layer on vLLM's path and counts it once per
    process; a forced backend is an error, as for any backend that cannot run."""
    monkeypatch.delenv(envs.BACKEND.name, raising=False)
    for _ in range(3):  # three layers, one record
        assert build_route(facts("f16", "float16"), arch="cpu") is None
    labels = {
        "chosen": "auto",
        "backend": "vllm-path",
        "arch": "cpu",
        "model": "f16",
        "reason": "state dtype float16",
    }
    assert REGISTRY.get_sample_value("gdn_serve_backend_fallbacks_total", labels) == 1
    monkeypatch.setenv(envs.BACKEND.name, "cpu")
    with pytest.raises(ValueError, match="unknown state dtype 'float16'"):
        build_route(facts("f16-forced", "float16"), arch="cpu")


def test_metrics_refuse_other_labels() -> None:
    with pytest.raises(ValueError, match="takes labels"):
        metrics.record(metrics.DECODE_SECONDS, 1e-5, backend="cpu")


def test_child_processes_report_through_the_relay(monkeypatch: pytest.MonkeyPatch) -> None:
    """What vLLM's CPU engine processes do under Ray Serve: they are not Ray processes, so they
    send each record to the relay their parent started, which records it in the parent."""
    monkeypatch.setenv(envs.METRICS_RELAY.name, "")  # restored afterwards: later tests record here
    path = metrics.start_relay()
    assert os.environ[envs.METRICS_RELAY.name] == path and Path(path).is_socket()
    child = (
        "from gdn_serve import metrics\n"
        "metrics.record(metrics.DECODE_SECONDS, 3e-5, backend='cpu', arch='cpu', model='relayed',"
        " batch='1')\n"
    )
    subprocess.run([sys.executable, "-c", child], check=True, env=os.environ.copy(), timeout=120)
    labels = {"backend": "cpu", "arch": "cpu", "model": "relayed", "batch": "1"}
    deadline = time.monotonic() + 10
    while REGISTRY.get_sample_value("gdn_serve_decode_seconds_count", labels) is None:
        assert time.monotonic() < deadline, "the relay never recorded the child's sample"
        time.sleep(0.05)
    assert REGISTRY.get_sample_value("gdn_serve_decode_seconds_sum", labels) == pytest.approx(3e-5)


def test_a_kernel_is_prepared_once_per_batch_size_and_counted_on_the_device() -> None:
    """The route asks the backend to prepare (check + configure) a kernel the first time it sees
    a batch size and reuses it; with counting on, every call adds one on the device."""
    prepared: list[int] = []
    ran: list[int] = []

    def prepare(args: DecodeArgs) -> Any:
        prepared.append(len(args.out))
        return lambda a: ran.append(len(a.out))

    route = _route("reference", registry.Loaded(False, prepare, None), counting=True)
    for batch in (1, 4, 1, 1, 4, 2):
        out = torch.zeros(batch, 1, 2, 8)
        z = torch.zeros(1, 1)
        route.decode(DecodeArgs(z, z, z, z, z, 1.0, z, out, torch.zeros(batch), True))
    assert prepared == [1, 4, 2] and ran == [1, 4, 1, 1, 4, 2]
    assert route.counts() == (6, 0)
    route.count_other(torch.device("cpu"))
    assert route.counts() == (6, 1)
    assert _route("reference").counts() is None  # not counting: no counter at all


def test_a_fused_route_hands_large_batches_to_its_partner() -> None:
    """`triton-fused` runs the whole layer step up to `fused_max_batch`; larger plain decode
    batches go to the unfused partner (vLLM's norm follows), each prepared once per size."""
    ran: list[tuple[str, int]] = []

    def loaded(name: str, fused: bool) -> registry.Loaded:
        def prepare(args: Any, *workspace: Any) -> Any:
            return lambda a: ran.append((name, len(a.out)))

        return registry.Loaded(fused, prepare, None)

    route = _route(
        "triton-fused", loaded("fused", True), partner=loaded("triton", False),
        fused_max_batch=4, workspace=object(),
    )  # fmt: skip
    assert [route.fuses(b) for b in (1, 4, 5, 64)] == [True, True, False, False]
    z = torch.zeros(1, 1)
    for batch in (1, 4):
        route.decode_fused(
            FusedArgs(z, z, z, z, z, z, z, torch.zeros(batch, 2, 8), cast(Any, None))
        )
    for batch in (5, 64):
        out = torch.zeros(batch, 1, 2, 8)
        route.decode(DecodeArgs(z, z, z, z, z, 1.0, z, out, torch.zeros(batch), True))
    assert ran == [("fused", 1), ("fused", 4), ("triton", 5), ("triton", 64)]
    alone = _route("triton-fused", loaded("fused", True), workspace=object())
    assert alone.fuses(512)  # no partner: every batch fused
    with pytest.raises(RuntimeError, match="whole layer step"):
        alone.decode(DecodeArgs(z, z, z, z, z, 1.0, z, torch.zeros(8, 1, 2, 8), z, True))
    labels = [decode_route.kernel_that_runs("triton-fused", "triton", 8, b) for b in (1, 8, 9)]
    assert labels == ["triton-fused", "triton-fused", "triton"]
    assert decode_route.kernel_that_runs("triton", None, 8, 256) == "triton"
