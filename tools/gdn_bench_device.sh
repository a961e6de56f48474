#!/usr/bin/env bash
# On the GPU machine: unpack the baselines tools/gdn_bench_prep.sh made (whichever of .whl-a/
# and .whl/ this call carried) into /tmp/gdn-site, which later calls on the same machine reuse,
# then run `python -m gdn_serve.bench.kernels --tune ARGS` if any ARGS are given.
set -euo pipefail
SITE=/tmp/gdn-site
mkdir -p "$SITE"
for t in .whl-a/*.tar.xz .whl/*.tar.xz; do
    if [ -f "$t" ]; then tar -xJf "$t" -C "$SITE" && echo "unpacked $t"; fi
done
if [ -d .whl-a/vllm_src ]; then rm -rf "$SITE/vllm_src" && cp -r .whl-a/vllm_src "$SITE/"; fi
for w in .whl-a/*.whl; do
    if [ -f "$w" ]; then python3 -m pip install -q --no-deps --no-compile --target "$SITE" "$w"; fi
done
if [ $# -eq 0 ]; then exit 0; fi
# nvidia-cutlass-dsl puts its packages on the path through a .pth file, which --target skips
export PYTHONPATH="$SITE:$SITE/nvidia_cutlass_dsl/dsl_packages:$PWD" PYTHONUNBUFFERED=1
exec python3 -m gdn_serve.bench.kernels --tune --vllm-src "$SITE/vllm_src" "$@"
