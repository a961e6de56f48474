"""The dependency rules of docs/architecture.md, as tests.

Two kinds of check:
- static: every `import` in the tree (module level and inside functions) is read with `ast`
  and each edge between our modules is held against the layer table below; a rule broken by
  one line anywhere fails here with the file and line;
- at run time: the operator, imported in a fresh interpreter, loads no serving stack (the
  operator image has neither torch, Triton, vLLM nor Ray), and of gdn_serve only the pure
  modules it shares.
`test_the_checker_sees_a_broken_rule` breaks each rule on purpose in a scratch tree, so a
checker that saw nothing could not pass.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = (ROOT, ROOT / "operator")  # where `gdn_serve` and `gdn_operator` live

# Layers of gdn_serve, lowest first: a module may import its own layer and the ones below.
# Deeper names win (`gdn_serve.backends.rules` over `gdn_serve.backends`).
LAYERS: dict[str, int] = {
    "gdn_serve.envs": 0,
    "gdn_serve.paths": 0,
    "gdn_serve.contract": 0,
    "gdn_serve.backends.measured": 0,
    "gdn_serve.backends.rules": 0,
    "gdn_serve.compat": 0,
    "gdn_serve.kernels": 1,
    "gdn_serve.metrics": 1,
    "gdn_serve.tiny_model": 1,
    "gdn_serve.backends": 2,
    "gdn_serve.plugin": 3,
    "gdn_serve.serve": 3,
    "gdn_serve.bench": 4,
    "gdn_serve.loadtest": 4,
    "gdn_serve.cli": 5,
    "gdn_operator.api": 10,
    "gdn_operator.kube": 11,
    "gdn_operator.plan": 11,
    "gdn_operator.control": 12,
    "gdn_operator.__main__": 13,
    "gdn_operator": 10,
}
# Layers that never import each other, whatever their rank.
APART = {("gdn_serve.plugin", "gdn_serve.serve"), ("gdn_serve.serve", "gdn_serve.plugin")}
# Besides vLLM's entry point (and tests), who may import the plugin: the engine harness, which
# mounts it into an engine it starts itself (plugin on and off in one process, see bench/engine).
PLUGIN_MOUNTERS = {"gdn_serve.bench.engine"}
# What the operator may import of gdn_serve: the pure rules and the contract, with their leaves.
OPERATOR_MAY_USE = {
    "gdn_serve",
    "gdn_serve.backends",
    "gdn_serve.backends.rules",
    "gdn_serve.backends.measured",
    "gdn_serve.contract",
    "gdn_serve.envs",
}
# Third-party packages gdn_serve.kernels may import at module level (others' kernels only
# inside the adapter functions that call them).
KERNEL_PACKAGES = {"torch", "triton"}
KERNEL_LAZY_PACKAGES = {"vllm", "flashinfer"}
HEAVY = ("torch", "triton", "vllm", "ray")
# Tools that measure the stack from outside (the stack benchmark uses the load generator):
# they import each other, and nothing that serves imports them.
OFF_LINE = ("gdn_serve.bench", "gdn_serve.loadtest")


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module (as written, absolute)
    path: Path
    line: int
    lazy: bool  # inside a function

    def where(self) -> str:
        return f"{self.path}:{self.line}: {self.source} -> {self.target}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST) -> list[tuple[str, int, bool]]:
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                # `from pkg import mod` imports pkg.mod when mod is a module: count both forms
                found.append((child.module, child.lineno, lazy))
                found.extend((f"{child.module}.{a.name}", child.lineno, lazy) for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


def edges(roots: tuple[Path, ...], packages: tuple[str, ...]) -> list[Edge]:
    """Every import made by a module of `packages` under `roots`."""
    result = []
    for root in roots:
        for package in packages:
            for path in sorted((root / package).rglob("*.py")) if (root / package).is_dir() else []:
                source = module_name(path, root)
                for target, line, lazy in _imports(ast.parse(path.read_text())):
                    result.append(Edge(source, target, path, line, lazy))
    return result


def known(target: str, modules: set[str]) -> str | None:
    """`target` if it names one of our modules (`from a import name` also yields a.name,
    which is only a module when a file says so)."""
    return target if target in modules else None


def layer_of(module: str) -> tuple[str, int] | None:
    keys = [k for k in LAYERS if module == k or module.startswith(k + ".")]
    if not keys:
        return None
    key = max(keys, key=len)
    return key, LAYERS[key]


def violations(all_edges: list[Edge], modules: set[str]) -> list[str]:
    found = []
    for edge in all_edges:
        top = edge.target.split(".")[0]
        if edge.source.startswith("gdn_serve.kernels"):
            ours = top == "gdn_serve"
            if ours and not edge.target.startswith("gdn_serve.kernels"):
                found.append(f"kernels import only themselves: {edge.where()}")
            if not ours and top in KERNEL_LAZY_PACKAGES and not edge.lazy:
                found.append(f"kernels import others' kernels lazily only: {edge.where()}")
            allowed = KERNEL_PACKAGES | KERNEL_LAZY_PACKAGES | sys.stdlib_module_names
            if not ours and top not in allowed:
                found.append(f"kernels import only torch and triton: {edge.where()}")
        target = known(edge.target, modules)
        if target is None or edge.source.startswith(target + "."):
            continue  # not ours, or a package the importer sits in (loaded with it anyway)
        src, dst = layer_of(edge.source), layer_of(target)
        if src is None or dst is None or src[0] == dst[0]:
            continue
        if edge.source.startswith("gdn_operator") and target.startswith("gdn_serve"):
            if target not in OPERATOR_MAY_USE:
                found.append(f"the operator imports only rules and contract: {edge.where()}")
            continue
        if (src[0], dst[0]) in APART:
            found.append(f"{src[0]} and {dst[0]} never import each other: {edge.where()}")
        elif target.startswith("gdn_serve.plugin") and not (
            edge.source.startswith("tests") or edge.source in PLUGIN_MOUNTERS
        ):
            found.append(f"only vLLM's entry point imports the plugin: {edge.where()}")
        elif target.startswith(OFF_LINE) and not (
            edge.source.startswith(OFF_LINE) or (edge.source == "gdn_serve.cli" and edge.lazy)
        ):
            found.append(
                f"nothing at run time imports bench or loadtest (cli: lazily): {edge.where()}"
            )
        elif dst[1] > src[1]:
            found.append(f"upward import ({src[0]} below {dst[0]}): {edge.where()}")
    return found


def our_modules(roots: tuple[Path, ...], packages: tuple[str, ...]) -> set[str]:
    return {
        module_name(path, root)
        for root in roots
        for package in packages
        if (root / package).is_dir()
        for path in (root / package).rglob("*.py")
    }


PACKAGES = ("gdn_serve", "gdn_operator")


def test_the_tree_obeys_the_layer_rules() -> None:
    modules = our_modules(SOURCE_ROOTS, PACKAGES)
    assert {"gdn_serve.kernels.reference", "gdn_operator.plan.planner"} <= modules
    assert violations(edges(SOURCE_ROOTS, PACKAGES), modules) == []


def test_the_plugin_is_reached_through_vllms_entry_point_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["vllm.general_plugins"] == {
        "gdn_serve": "gdn_serve.plugin.entry:register"
    }


SCRATCH = {
    "gdn_serve/__init__.py": "",
    "gdn_serve/envs.py": "",
    "gdn_serve/kernels/__init__.py": "",
    "gdn_serve/kernels/k.py": "import numpy\nfrom gdn_serve import metrics\nimport vllm\n",
    "gdn_serve/metrics.py": "from gdn_serve.serve import app\n",
    "gdn_serve/serve/__init__.py": "",
    "gdn_serve/serve/app.py": "from gdn_serve.plugin import layer\nfrom gdn_serve.bench import x\n",
    "gdn_serve/plugin/__init__.py": "",
    "gdn_serve/plugin/layer.py": "",
    "gdn_serve/bench/__init__.py": "",
    "gdn_serve/bench/x.py": (
        "from gdn_serve.plugin import layer\nfrom gdn_serve.loadtest import y\n"
    ),
    "gdn_serve/loadtest/__init__.py": "",
    "gdn_serve/loadtest/y.py": "",
    "gdn_serve/backends/report.py": "from gdn_serve.loadtest import y\n",
    "gdn_serve/bench/engine.py": "from gdn_serve.plugin import layer\n",
    "gdn_serve/cli.py": "def main():\n    from gdn_serve.bench import x\n",
    "gdn_serve/backends/__init__.py": "",
    "gdn_serve/backends/registry.py": "",
    "gdn_operator/__init__.py": "from gdn_serve.backends import registry\n",
}


def test_the_checker_sees_a_broken_rule(tmp_path: Path) -> None:
    for name, text in SCRATCH.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = violations(edges((tmp_path,), PACKAGES), our_modules((tmp_path,), PACKAGES))
    rules = sorted({v.split(":")[0] for v in found})
    assert rules == [
        "gdn_serve.serve and gdn_serve.plugin never import each other",
        "kernels import only themselves",
        "kernels import only torch and triton",
        "kernels import others' kernels lazily only",
        "nothing at run time imports bench or loadtest (cli",
        "only vLLM's entry point imports the plugin",
        "the operator imports only rules and contract",
        "upward import (gdn_serve.metrics below gdn_serve.serve)",
    ], found
    assert not any("gdn_serve/cli.py" in v for v in found)  # the lazy CLI dispatch is allowed
    assert not any("bench/engine.py" in v for v in found)  # the engine harness mounts the plugin
    assert not any("bench/x.py" in v and "loadtest" in v for v in found)  # bench uses loadtest
    assert any("backends/report.py" in v for v in found)


OPERATOR_ENTRY_MODULES = (
    "gdn_operator",
    "gdn_operator.__main__",
    "gdn_operator.control.runner",
    "gdn_operator.api.crd",
    "gdn_operator.plan.planner",
    "gdn_operator.plan.manifest",
)


@pytest.mark.parametrize("modules", [OPERATOR_ENTRY_MODULES])
def test_importing_the_operator_pulls_in_no_serving_stack(modules: tuple[str, ...]) -> None:
    # what the interpreter loaded before (site hooks of this venv) is not the operator's doing
    code = (
        "import importlib, json, sys\n"
        "before = set(sys.modules)\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    loaded = json.loads(out)
    assert [m for m in loaded if m.split(".")[0] in HEAVY] == []
    shared = {m for m in loaded if m.split(".")[0] == "gdn_serve"}
    assert shared <= OPERATOR_MAY_USE
    assert {"gdn_serve.backends.rules", "gdn_serve.contract"} <= shared
