"""tools/ on sys.path, so the tests import the generator's package `observability` as the
generator itself does (tools/ is no package)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
