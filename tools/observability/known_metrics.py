"""Which metric names exist: read from the code that registers them, never a hand-kept list.

- ours: `gdn_serve.metrics.BY_NAME` (exported under Ray as `ray_gdn_serve_*`);
- vLLM's: every `"vllm:<name>"` literal in the installed vllm package (vLLM's own generator
  reads its tree the same way), under Ray `ray_vllm_<name>`;
- Ray Serve's: every `"serve_<name>"` literal in the installed ray.serve, plus the per-protocol
  family `serve_num_{protocol}_requests` and the like, under Ray `ray_serve_*`;
- the operator's: what `OperatorMetrics` registers in a fresh registry.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry

# What the exposition appends to a histogram's or counter's name.
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")
PROTOCOLS = ("http", "grpc")  # Ray Serve's request_ingress_metrics formats its names per protocol
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{name} is not installed: cannot read its metric names")
    return Path(next(iter(spec.submodule_search_locations)))


def _literals(root: Path, pattern: str) -> set[str]:
    found: set[str] = set()
    for path in root.rglob("*.py"):
        found.update(re.findall(pattern, path.read_text("utf-8", errors="replace")))
    return found


def gdn_serve_names() -> set[str]:
    from gdn_serve.metrics import BY_NAME

    return {f"ray_{name}" for name in BY_NAME}


def vllm_names() -> set[str]:
    names = _literals(_package_dir("vllm"), r"[\"'](vllm:\w+)[\"']")
    return {"ray_" + n.replace(":", "_") for n in names}


def ray_serve_names() -> set[str]:
    root = _package_dir("ray.serve")
    names = _literals(root, r"[\"'](serve_\w+)[\"']")
    for template in _literals(root, r"f[\"'](serve_[\w{}]+)[\"']"):
        names.update(re.sub(r"\{\w+\}", p, template) for p in PROTOCOLS)
    return {f"ray_{n}" for n in names}


def operator_names() -> set[str]:
    from gdn_operator.control.metrics import OperatorMetrics

    registry = CollectorRegistry()
    OperatorMetrics(registry).watch_objects(list)
    return {sample.name for family in registry.collect() for sample in family.samples} | {
        family.name for family in registry.collect()
    }


def defined() -> set[str]:
    return gdn_serve_names() | vllm_names() | ray_serve_names() | operator_names()


def queried(expr: str) -> set[str]:
    """The metric names a PromQL expression selects. Drops string literals, label matchers,
    ranges, the label lists of by/without/on/ignoring/group_*, function names, numbers and
    durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(?<![\w:])[0-9][\w.]*", " ", text)  # numbers and durations (offset 10m)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", text):
        following = text[match.end() :].lstrip()
        word = match.group()
        if following.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def undefined(exprs: Iterable[str], known: set[str]) -> list[str]:
    """Names queried in `exprs` that no code defines (a name may carry an exposition suffix)."""
    wanted = set().union(*(queried(e) for e in exprs))
    return sorted(
        n for n in wanted if {n, *(n.removesuffix(s) for s in SUFFIXES)}.isdisjoint(known)
    )
