"""Measured speed of each GDN decode backend against vLLM's kernel; do not edit.
Written by `python -m gdn_serve.bench.kernels --write-table RUN.json...` (`bench/summary.py`).

SPEEDUP[arch][state dtype][backend] = (geometric mean, worst, shapes measured) of vLLM's time
over the backend's; `backends.rules` orders the backends of a measured arch by it.
"""

SOURCE: dict[str, str] = {
    "sm90": "NVIDIA H100 80GB HBM3 2026-11-22, NVIDIA H200 2026-11-22",
}
SPEEDUP: dict[str, dict[str, dict[str, tuple[float, float, int]]]] = {
    "sm90": {
        "bfloat16": {
            "flashinfer": (1.044, 0.956, 42),
            "triton": (1.092, 0.993, 42),
            "triton-fused": (1.151, 0.772, 42),
            "vllm": (1.0, 1.0, 42),
        },
        "float32": {
            "flashinfer": (1.081, 0.967, 42),
            "triton": (1.166, 1.002, 42),
            "triton-fused": (1.22, 0.96, 42),
            "vllm": (1.0, 1.0, 42),
        },
    },
}
