"""Regenerate what is generated from the operator's CRD source (operator/gdn_operator/api/crd.py):
the chart's CRD copy and docs/crd-reference.md. `--check` fails if either is stale.

    python tools/operator_generate.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gdn_operator.api import crd, crd_docs

ROOT = Path(__file__).resolve().parent.parent
CHART_CRD = ROOT / "charts/qwen35-stack/crds" / f"{crd.NAME}.yaml"
REFERENCE = ROOT / "docs/crd-reference.md"


def outputs() -> dict[Path, str]:
    return {CHART_CRD: crd.render_yaml(), REFERENCE: crd_docs.render()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args()
    stale = [p for p, text in outputs().items() if not p.exists() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)} (run python tools/operator_generate.py)")
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(outputs()[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
