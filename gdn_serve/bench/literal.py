"""Python source for the generated data modules (`launch_table.py`, `backends/measured.py`):
nested dicts of plain values, one key per line with trailing commas, which is how ruff formats
them, so a regenerated file passes `ruff format --check` as written."""

from __future__ import annotations

import json


def python_literal(value: object, indent: int = 0) -> str:
    """`value` (dicts, tuples, str, int, float, bool) as Python source, dicts expanded."""
    if isinstance(value, dict):
        if not value:
            return "{}"
        pad = " " * (indent + 4)
        items = "".join(
            f"{pad}{python_literal(k)}: {python_literal(v, indent + 4)},\n"
            for k, v in value.items()
        )
        return "{\n" + items + " " * indent + "}"
    if isinstance(value, tuple):
        inner = ", ".join(python_literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # double quotes, as ruff writes them
    return repr(value)
