"""Tuned launch configs; do not edit. Written by
`python -m gdn_serve.kernels.bench --write-table RUN.json...` from GPU runs made with
`bench --tune --out RUN.json`.

TABLE[(arch, kernel, state dtype, HV)][batch] = (block_v, num_warps, per_key_head). Until a GPU
run has filled it, every arch uses DEFAULT.
"""

PROVENANCE: dict[str, dict[str, str]] = {}
TABLE: dict[tuple[str, str, str, int], dict[int, tuple[int, int, bool]]] = {}
DEFAULT: dict[str, tuple[int, int, bool]] = {"decode": (32, 4, False), "fused": (32, 4, False)}
