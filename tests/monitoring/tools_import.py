"""Imports tools/generate_monitoring.py, which puts tools/ on sys.path for `observability`."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts/qwen35-stack/monitoring/rules.yaml"
DASHBOARDS = ROOT / "charts/qwen35-stack/monitoring/dashboards"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "generate_monitoring", ROOT / "tools/generate_monitoring.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATE = generator()
