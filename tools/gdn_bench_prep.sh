#!/usr/bin/env bash
# Prepare .whl/ for `gdn-serve bench` on a GPU machine that has torch + Triton but no network:
# the pinned vLLM wheel's decode-path kernels (extracted, never committed) and fla-core's wheel.
# Usage: tools/gdn_bench_prep.sh [python]   (python: one with this project importable)
set -euo pipefail
PY=${1:-.cache/venv/bin/python}
DL=.cache/dl
mkdir -p "$DL" .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$DL" vllm==0.32.0 fla-core==0.6.0
rm -rf .whl/vllm_src
"$PY" -m gdn_serve.kernels.bench --extract-vllm "$DL"/vllm-0.32.0-*.whl --vllm-src .whl/vllm_src
cp "$DL"/fla_core-0.6.0-py3-none-any.whl .whl/
echo "On the GPU machine (carry .whl):"
echo "  pip install --no-deps --target /tmp/site .whl/fla_core-*.whl && PYTHONPATH=/tmp/site:\$PWD \\"
echo "  python3 -m gdn_serve.kernels.bench --tune --vllm-src .whl/vllm_src --out RUN.json"
