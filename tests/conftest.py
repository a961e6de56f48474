"""Suite-wide set-up: every cache of every tool goes under the project's cache folder."""

from __future__ import annotations

from gdn_serve import paths

# Before any test imports torch, Triton, vLLM or Ray, so none of them writes under ~ or /tmp.
paths.apply_cache_env()
