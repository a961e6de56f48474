#!/usr/bin/env bash
# On the GPU machine: unpack the vLLM 0.32.0 engine pieces that tools/gpu_engine_prep.sh made
# (whichever of .gpu/p1 ... .gpu/pN this call carried) into /tmp/gdn-engine/site, which later
# calls reuse while the machine stays warm, then run a command against it.
#
# Usage: bash tools/gpu_engine_device.sh [--check] [--plugin] [-- COMMAND ARGS...]
#   --check   with every piece unpacked: import vLLM, load its native library, print versions
#   --plugin  make vLLM find our plugin through its entry point (the `vllm.general_plugins`
#             entry of pyproject.toml, read now, so a moved module is followed) in every
#             process it starts; without it vLLM runs unmodified unless the command itself
#             calls the plugin's register()
#   -- CMD    run CMD with the site and the repository on PYTHONPATH and the environment
#             below; refused while a piece is missing
# Each piece carries a PIECE file (build id, name, piece count, files). A piece counts as
# unpacked when its marker (a copy of that file, written after the last file landed) is in
# /tmp/gdn-engine/pieces; a piece of another build wipes the site first.
set -euo pipefail
SELF=$(realpath "$0")
cd "$(dirname "$SELF")/.."

ENGINE=${GDN_ENGINE_DIR:-/tmp/gdn-engine}
SITE=$ENGINE/site
MARKS=$ENGINE/pieces
CHECK=0
PLUGIN=0
while [ $# -gt 0 ]; do
    case $1 in
        --check) CHECK=1 ;;
        --plugin) PLUGIN=1 ;;
        --) shift; break ;;
        -h | --help) sed -n '2,17p' "$SELF"; exit 0 ;;
        *) echo "unknown argument $1 (a command goes after --)" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$SITE" "$MARKS"

field() { awk -v k="$1" '$1 == k { print $2; exit }' "$2"; }  # field KEY PIECE-FILE

# --- unpack what this call carried -----------------------------------------------------------
for piece in .gpu/p*/; do
    piece=${piece%/}
    [ -f "$piece/PIECE" ] || continue
    build=$(field build "$piece/PIECE")
    name=$(field piece "$piece/PIECE")
    if [ -f "$MARKS/BUILD" ] && [ "$(field build "$MARKS/BUILD")" != "$build" ]; then
        echo "the site holds build $(field build "$MARKS/BUILD"); $piece is build $build:" \
            "starting over"
        rm -rf "$SITE" "$MARKS"
        mkdir -p "$SITE" "$MARKS"
    fi
    printf 'build %s\nof %s\n' "$build" "$(field of "$piece/PIECE")" > "$MARKS/BUILD"
    if cmp -s "$piece/PIECE" "$MARKS/$name"; then
        echo "$name: already unpacked"
        continue
    fi
    while read -r key file; do  # the piece arrived whole?
        if [ "$key" = file ] && [ ! -f "$piece/$file" ]; then
            echo "$name: $file is missing from $piece" >&2
            exit 1
        fi
    done < "$piece/PIECE"
    start=$SECONDS
    for t in "$piece"/*.tar.xz; do
        if [ -f "$t" ]; then tar -xJf "$t" -C "$SITE"; fi
    done
    wheels=("$piece"/*.whl)
    if [ -f "${wheels[0]}" ]; then
        # Into a scratch target, then merged: pip --target skips a top-level folder that
        # already exists, which would drop the second namespace package (opentelemetry-*)
        # installed by another call.
        tmp=$(mktemp -d "$ENGINE/wheels.XXXXXX")
        python3 -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
            --no-compile --target "$tmp" "${wheels[@]}"
        cp -a "$tmp"/. "$SITE"/
        rm -rf "$tmp"
    fi
    cp "$piece/PIECE" "$MARKS/$name"
    echo "$name: unpacked ($(grep -c '^file ' "$piece/PIECE") files, $((SECONDS - start)) s)"
done

# --- which pieces the site has ---------------------------------------------------------------
if [ ! -f "$MARKS/BUILD" ]; then
    echo "no piece unpacked yet in $SITE: carry .gpu/p1 (then p2 ...) with this script" >&2
    exit 3
fi
build=$(field build "$MARKS/BUILD")
of=$(field of "$MARKS/BUILD")
have=() missing=()
for i in $(seq 1 "$of"); do
    if [ -f "$MARKS/p$i" ]; then have+=("p$i"); else missing+=("p$i"); fi
done
echo "build $build: unpacked ${have[*]:-none}; missing ${missing[*]:-none}"
# llguidance 1.7.6 ships manylinux_2_31 only (the rest is <= 2_28)
glibc=$(python3 -c 'import platform; print(platform.libc_ver()[1])')
if [ "$(printf '%s\n2.31\n' "$glibc" | sort -V | head -1)" != 2.31 ]; then
    echo "warning: glibc $glibc is older than 2.31, which llguidance's wheel needs" >&2
fi

# --- the environment vLLM needs here ---------------------------------------------------------
# Each may be overridden by setting it before calling this script.
# The unpacked site first (its packages win over none the machine has, but vLLM must not
# be shadowed), then the repository (gdn_serve), then whatever the caller had.
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# FlashInfer is not carried; vLLM's sampler would use it by default on CUDA
# (vllm/envs.py VLLM_USE_FLASHINFER_SAMPLER, default True); 0 = PyTorch/Triton top-k/top-p.
export VLLM_USE_FLASHINFER_SAMPLER=${VLLM_USE_FLASHINFER_SAMPLER:-0}
# DeepGEMM is left out of the tree (has_deep_gemm() is then False anyway); say so explicitly.
export VLLM_USE_DEEP_GEMM=${VLLM_USE_DEEP_GEMM:-0} VLLM_MOE_USE_DEEP_GEMM=${VLLM_MOE_USE_DEEP_GEMM:-0}
# No network: usage stats (which also import py-cpuinfo, not carried) and Hub look-ups off.
export VLLM_NO_USAGE_STATS=1 VLLM_DO_NOT_TRACK=1 DO_NOT_TRACK=1
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1}
# Compile caches (vLLM's torch.compile artifacts, inductor, Triton) beside the site, so that a
# second engine start on the warm machine skips the compiles (gpu-engine.md: ~160 s cold).
export VLLM_CACHE_ROOT=${VLLM_CACHE_ROOT:-$ENGINE/cache/vllm}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$ENGINE/cache/inductor}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$ENGINE/cache/triton}
# Engine core in this process (0): torch.profiler around llm.generate sees the GPU kernels,
# and a register() called by the script applies to the engine. 1 = vLLM's default (a
# separate EngineCore process; then use --plugin).
export VLLM_ENABLE_V1_MULTIPROCESSING=${VLLM_ENABLE_V1_MULTIPROCESSING:-0}

if [ "$PLUGIN" = 1 ]; then
    # A minimal dist-info with our entry point, on the path: vLLM's load_general_plugins()
    # finds it in every process (VLLM_PLUGINS="" still turns all plugins off).
    meta=$ENGINE/plugin/gdn_serve_repo-0.0.dist-info
    rm -rf "$ENGINE/plugin"
    mkdir -p "$meta"
    python3 - "$meta" <<'EOF'
import sys, tomllib
from pathlib import Path
meta = Path(sys.argv[1])
project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
plugins = project["entry-points"]["vllm.general_plugins"]
(meta / "METADATA").write_text("Metadata-Version: 2.1\nName: gdn-serve-repo\nVersion: 0.0\n")
(meta / "entry_points.txt").write_text(
    "[vllm.general_plugins]\n" + "".join(f"{k} = {v}\n" for k, v in plugins.items()))
print("plugin entry points:", plugins)
EOF
    export PYTHONPATH="$ENGINE/plugin:$PYTHONPATH"
fi

if [ "$CHECK" = 1 ] || [ $# -gt 0 ]; then
    if [ ${#missing[@]} -gt 0 ]; then
        echo "refusing to run: pieces ${missing[*]} of build $build are not unpacked yet" >&2
        exit 3
    fi
fi
if [ "$CHECK" = 1 ]; then
    python3 - <<'EOF'
import importlib.metadata as md, time
t = time.time()
import torch, triton, vllm
print(f"vllm {vllm.__version__} ({vllm.__file__}), torch {torch.__version__},"
      f" triton {triton.__version__}")
# the native libraries the engine loads (vllm/platforms/cuda.py imports the first two)
import vllm._C_stable_libtorch, vllm._moe_C_stable_libtorch, vllm.vllm_flash_attn
from vllm.platforms import current_platform
print(f"platform {type(current_platform).__name__}: {current_platform.get_device_name()},"
      f" _C ops: {hasattr(torch.ops._C, 'rms_norm')} ({time.time() - t:.1f} s)")
print("vllm.general_plugins:", [e.value for e in md.entry_points(group="vllm.general_plugins")])
EOF
fi
if [ $# -gt 0 ]; then
    exec "$@"
fi
