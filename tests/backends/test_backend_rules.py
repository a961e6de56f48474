"""The pure resolution rules: per simulated arch, forcing, fallbacks, and the no-heavy-imports
promise the operator depends on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gdn_serve.backends import rules
from gdn_serve.backends.rules import KNOWN_BACKENDS, resolve_backend


@pytest.mark.parametrize("arch", ["sm90", "sm89", "sm80", "sm100", "sm120"])
def test_auto_picks_the_first_backend_of_the_arch_order(arch: str) -> None:
    resolution = resolve_backend(arch)
    assert resolution.requested == "auto"
    assert resolution.active == rules.preference_for(arch).order[0]
    assert arch in resolution.reason


def test_cpu_picks_the_cpu_backend() -> None:
    assert resolve_backend("cpu").active == "cpu"


def test_unmeasured_arch_says_so() -> None:
    assert "unmeasured" in resolve_backend("sm89").reason
    assert "unmeasured" in resolve_backend("sm120").reason


def test_missing_packages_fall_back_and_name_what_was_skipped() -> None:
    resolution = resolve_backend("sm90", available=frozenset({"vllm", "reference"}))
    assert resolution.active == "vllm"
    assert "triton (not importable here (needs triton))" in resolution.reason


def test_bare_image_falls_back_to_the_reference() -> None:
    resolution = resolve_backend("sm90", available=frozenset({"reference"}))
    assert resolution.active == "reference"


@pytest.mark.parametrize("backend", KNOWN_BACKENDS)
def test_a_forced_backend_runs_where_its_verifier_agrees(backend: str) -> None:
    for arch in ("cpu", "sm80", "sm89", "sm90", "sm100"):
        ok, why = rules.check_backend(backend, arch)
        if ok:
            resolution = resolve_backend(arch, backend)
            assert (resolution.requested, resolution.active) == (backend, backend)
        else:
            with pytest.raises(ValueError, match=f"'{backend}' was forced but cannot run"):
                resolve_backend(arch, backend)
            assert why


@pytest.mark.parametrize(
    ("arch", "backend", "why"),
    [
        ("sm89", "flashinfer", "needs sm90+"),
        ("sm120", "flashinfer", "sm90..sm103 only"),
        ("cpu", "triton", "needs a GPU"),
        ("sm90", "cpu", "no GPU support"),
        ("sm75", "triton-fused", "needs sm80+"),
    ],
)
def test_forcing_a_backend_the_arch_cannot_run_says_why(arch: str, backend: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        resolve_backend(arch, backend)


def test_forced_backend_that_is_not_installed_is_an_error() -> None:
    with pytest.raises(ValueError, match="not importable here"):
        resolve_backend("sm90", "flashinfer", available=frozenset({"triton", "vllm"}))


def test_head_dims_gate_flashinfer_only() -> None:
    assert not rules.check_backend("flashinfer", "sm90", head_dims=(64, 64))[0]
    assert rules.check_backend("triton", "sm90", head_dims=(64, 64))[0]
    assert not rules.check_backend("triton", "sm90", head_dims=(96, 128))[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("sm90", "cuda"), "unknown GDN backend 'cuda'"),
        (("gfx942",), "unknown arch 'gfx942'"),
        (("H100",), "unknown arch"),
    ],
)
def test_unknown_names_are_rejected(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_backend(*args)


def test_unknown_state_dtype_is_rejected() -> None:
    with pytest.raises(ValueError, match="state dtype"):
        resolve_backend("sm90", state_dtype="float16")


def test_every_preference_names_known_backends_that_can_run_there() -> None:
    for arch, pref in rules.PREFERENCES.items():
        assert set(pref.order) <= set(KNOWN_BACKENDS)
        assert all(rules.check_backend(name, arch)[0] for name in pref.order), arch


def test_rules_import_neither_torch_triton_nor_vllm() -> None:
    code = (
        "import sys, gdn_serve.backends.rules as r; r.resolve_backend('sm90');"
        "heavy = {'torch', 'triton', 'vllm'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_measured_arch_is_ordered_by_its_worst_shape_then_its_mean(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "fast-on-average" wins on the mean but loses 10 % at one shape: it goes after vLLM's
    speedup = {
        "triton": (1.2, 0.99, 4),
        "triton-fused": (1.5, 0.90, 4),
        "vllm": (1.0, 1.0, 4),
        "flashinfer": (1.1, 0.98, 4),
    }
    monkeypatch.setattr(rules.measured, "SPEEDUP", {"sm90": {"bfloat16": speedup}})
    monkeypatch.setattr(rules.measured, "SOURCE", {"sm90": "GPU X 2026-11-22"})
    pref = rules.preference_for("sm90", "bfloat16")
    assert pref.order == ("triton", "flashinfer", "vllm", "triton-fused", "reference")
    assert "GPU X" in pref.source and "triton-fused 1.50x (worst 0.90x)" in pref.source
    # the other state dtype was not measured: the generic GPU order applies
    assert "unmeasured" in rules.preference_for("sm90", "float32").source


def test_sm90_order_comes_from_the_committed_measurements() -> None:
    for state_dtype in rules.STATE_DTYPES:
        pref = rules.preference_for("sm90", state_dtype)
        assert set(rules.measured.SPEEDUP["sm90"][state_dtype]) <= set(pref.order)
        assert rules.measured.SOURCE["sm90"] in pref.source
        assert resolve_backend("sm90", state_dtype=state_dtype).active == pref.order[0]
