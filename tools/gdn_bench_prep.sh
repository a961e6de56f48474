#!/usr/bin/env bash
# Prepare what `gdn-serve bench` needs on a GPU machine that has torch + Triton but no network,
# in two folders, each under the 64 MiB one transfer to the GPU machine carries:
#   .whl-a/  vLLM's decode-path kernels (extracted from the pinned wheel, never committed),
#            fla-core's wheel, and FlashInfer's CuTe-DSL compiler library (xz, ~48 MB);
#   .whl/    FlashInfer (minus its C++ sources, which the GDN decode path never compiles) and
#            the rest of nvidia-cutlass-dsl and its pure dependencies (xz, ~26 MB).
# Carry .whl-a in one call and .whl in the next (the machine keeps /tmp while warm);
# tools/gdn_bench_device.sh unpacks whatever is there. Usage: tools/gdn_bench_prep.sh [python]
set -euo pipefail
PY=${1:-.cache/venv/bin/python}
DL=.cache/dl
STAGE=.cache/fi-stage
mkdir -p "$DL"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DL" \
    vllm==0.32.0 fla-core==0.6.0 flashinfer-python==0.7.2.post1 nvidia-cutlass-dsl==4.7.1 \
    nvidia-cutlass-dsl-libs-base==4.7.1 nvidia-cutlass-dsl-libs-core==4.7.1 \
    nvidia-cutlass-dsl-libs-cu13==4.7.1 apache-tvm-ffi==0.1.15.post2 cuda-tile==1.7.0
rm -rf .whl .whl-a "$STAGE"
mkdir -p .whl .whl-a "$STAGE/rest" "$STAGE/mlir"
"$PY" -m gdn_serve.bench.kernels --extract-vllm "$DL"/vllm-0.32.0-*.whl --vllm-src .whl-a/vllm_src
cp "$DL"/fla_core-0.6.0-py3-none-any.whl .whl-a/
for w in "$DL"/flashinfer_python-0.7.2.post1-*.whl "$DL"/nvidia_cutlass_dsl*-4.7.1-*.whl \
    "$DL"/apache_tvm_ffi-0.1.15.post2-*.whl "$DL"/cuda_tile-1.7.0-*.whl; do
    case "$w" in *libs_cu12*) continue ;; esac  # the GPU machines run CUDA 13
    unzip -q -o "$w" -d "$STAGE/rest"
done
rm -rf "$STAGE/rest/flashinfer/data" "$STAGE/rest/nvidia_cutlass_dsl/cu13/lib/stubs"
ir=nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir/_mlir_libs
mkdir -p "$STAGE/mlir/$ir"
mv "$STAGE/rest/$ir"/_cutlass_ir.cu13.*.so "$STAGE/mlir/$ir/"
tar -C "$STAGE/mlir" -cf - . | xz -9 -T0 > .whl-a/fi-mlir.tar.xz
tar -C "$STAGE/rest" -cf - . | xz -9 -T0 > .whl/fi-rest.tar.xz
rm -rf "$STAGE"
du -sh .whl-a .whl
echo "On the GPU machine: carry .whl-a and run 'bash tools/gdn_bench_device.sh', then (within"
echo "the machine's warm period) carry .whl and run 'bash tools/gdn_bench_device.sh --out RUN.json'"
