"""The operator image has neither torch, Triton, vLLM nor Ray: importing the operator must not
pull them in, nor the parts of gdn_serve that would."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = (
    "torch",
    "triton",
    "vllm",
    "ray",
    "gdn_serve.kernels",
    "gdn_serve.serve.app",
    "gdn_serve.vllm_plugin",
)
MODULES = (
    "gdn_operator",
    "gdn_operator.__main__",
    "gdn_operator.controller",
    "gdn_operator.runner",
    "gdn_operator.crd",
    "gdn_operator.planner",
    "gdn_operator.manifest",
)


def test_importing_the_operator_pulls_in_no_serving_stack() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for m in {MODULES!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    loaded = json.loads(out)
    leaked = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert leaked == []
    # What it does share with gdn_serve is pure.
    assert "gdn_serve.backends.rules" in loaded and "gdn_serve.serve.config" in loaded
