"""The operator image's contents, for real: a fresh virtualenv installed like the image's venv
stage (the operator lock and the project's wheel, both --no-deps) runs `gdn-operator --help`
and imports everything the operator's unit tests import, and has no torch, vLLM or Ray.

The lock is resolved for Debian 12 + Python 3.11, the image's platform and this machine's, so
the venv holds the very packages the image does."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.images.support import ROOT, lock_pins, lock_tool

LOCK = ROOT / "requirements/operator.lock"
# What the operator's tests import to test, not what the operator runs with: the dev lock's
# business (tests/images/test_operator_image.py checks they are there and not in the image).
TEST_TOOLS = {
    "pytest": "the runner",
    "tests": "the test tree itself",
    "hypothesis": "the CRD spec property test",
    "jsonschema": "the CRD schema checked against samples and KubeRay's own CRD",
    "kubernetes_validate": "Pod templates against Kubernetes' core/v1 schema",
    "psutil": "the CLI test's process tree",
    "ray": "the cross-check with KubeRay's autoscaler config reader",
    "gdn_serve.serve.processes": "the envtest harness's port picker (needs psutil)",
}
ABSENT = ["torch", "vllm", "ray", "triton", "transformers"]
# The modules a venv is asked about: {"imported": [...], "failed": {name: error}, "present": [...]}
PROBE = """
import importlib, importlib.util, json, sys
wanted, absent = json.loads(sys.argv[1]), json.loads(sys.argv[2])
failed = {}
for name in wanted:
    try:
        importlib.import_module(name)
    except Exception as error:
        failed[name] = repr(error)
present = [name for name in absent if importlib.util.find_spec(name) is not None]
print(json.dumps({"failed": failed, "present": present}))
"""


def operator_test_imports() -> list[str]:
    """Every module the operator's tests import that is not the standard library (the test
    files themselves: harness modules such as kube_envtest's port picker are test tooling)."""
    names: set[str] = set()
    for path in (ROOT / "tests/operator").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    return sorted(n for n in names if not is_test_tool(n) and top(n) not in sys.stdlib_module_names)


def top(name: str) -> str:
    return name.split(".")[0]


def is_test_tool(name: str) -> bool:
    return name in TEST_TOOLS or top(name) in TEST_TOOLS


def operator_modules() -> list[str]:
    """Every module of the operator package, so a module no test imports is covered too."""
    package = ROOT / "operator"
    paths = package.joinpath("gdn_operator").rglob("*.py")
    names = (".".join(path.relative_to(package).with_suffix("").parts) for path in paths)
    return sorted(name.removesuffix(".__init__") for name in names)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("operator-image")
    src = work / "src"  # the wheel is built from a copy: setuptools writes build/ beside it
    src.mkdir()
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, src / part)
    for part in ("gdn_serve", "operator"):
        shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    run = lambda *cmd: subprocess.run(cmd, check=True, capture_output=True, text=True)  # noqa: E731
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
        "--wheel-dir", str(work / "dist"), str(src))  # fmt: skip
    env = work / "venv"
    # no pip inside (ensurepip costs seconds): this interpreter's pip installs into it; no
    # bytecode either (the kubernetes client has ~1,000 modules): imports compile what they use
    run(sys.executable, "-m", "venv", "--without-pip", str(env))
    pip = [*venv_pip(env), "install", "--quiet", "--no-deps", "--no-compile"]
    run(*pip, "-r", str(LOCK))
    run(*pip, *map(str, (work / "dist").glob("*.whl")))
    return env


def venv_pip(env: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "--python", str(env / "bin/python")]


def probe(env: Path, wanted: list[str]) -> dict:
    out = subprocess.run(
        [str(env / "bin/python"), "-c", PROBE, json.dumps(wanted), json.dumps(ABSENT)],
        capture_output=True, text=True, check=True, cwd=env,  # not the checkout: no stray imports
    )  # fmt: skip
    return json.loads(out.stdout)


def test_gdn_operator_runs(venv: Path) -> None:
    result = subprocess.run(
        [str(venv / "bin/gdn-operator"), "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "--serving-image" in result.stdout


def test_imports_of_the_operator_and_its_tests_work_and_no_engine_is_there(venv: Path) -> None:
    wanted = sorted(set(operator_test_imports()) | set(operator_modules()))
    assert {"gdn_operator.control.controller", "gdn_operator.__main__", "kubernetes"} <= set(wanted)
    assert probe(venv, wanted) == {"failed": {}, "present": []}


def test_the_test_tools_are_the_dev_locks_and_not_the_images() -> None:
    dev, image = lock_pins("requirements/cpu-dev.lock"), lock_pins(LOCK)
    third_party = {top(name).replace("_", "-") for name in TEST_TOOLS} - {"tests", "gdn-serve"}
    assert third_party <= set(dev), third_party - set(dev)
    assert not third_party & set(image), third_party & set(image)


def test_the_venv_holds_exactly_the_lock(venv: Path) -> None:
    out = subprocess.run([*venv_pip(venv), "list", "--format=json"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    installed = {lock_tool.normalise(p["name"]): p["version"] for p in json.loads(out.stdout)}
    for tool in ("pip", "setuptools", "qwen35-stack"):  # an installer, if any; the wheel
        installed.pop(tool, None)
    assert installed == lock_pins(LOCK)


def test_negative_control_the_probe_sees_a_missing_module_and_a_present_engine(venv: Path) -> None:
    result = probe(venv, ["torch", "gdn_operator"])
    assert list(result["failed"]) == ["torch"]
    # this checkout's own venv has the engines: the same probe reports them
    here = subprocess.run([sys.executable, "-c", PROBE, "[]", json.dumps(ABSENT)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert {"torch", "vllm", "ray"} <= set(json.loads(here.stdout)["present"])
