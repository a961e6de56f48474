"""Suite-wide set-up, done before any test module imports torch, Triton, vLLM or Ray.

- Every cache of every tool goes under the project's cache folder, never ~ or /tmp.
- Triton runs our kernels through its CPU interpreter (no GPU here). Triton decides between
  interpreter and compiler when it is first imported in a process, so the switch must be set
  before anything (vLLM included) imports it. Only this process needs it: the vLLM engines that
  tests start run in child processes, which get `child_env()` without it.
"""

from __future__ import annotations

import os

from gdn_serve import paths

INTERPRETER = "TRITON_INTERPRET"

paths.apply_cache_env()
os.environ[INTERPRETER] = "1"


def child_env() -> dict[str, str | None]:
    """Overrides for the environment of child processes (None: unset)."""
    return {INTERPRETER: None}
