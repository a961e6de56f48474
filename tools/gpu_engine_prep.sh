#!/usr/bin/env bash
# Prepare a CUDA vLLM 0.32.0 engine for the GPU machines (Python 3.12, torch 2.11.0+cu130,
# triton 3.6.0, no network, no vLLM; see shared/notes/gpu-engine.md), as piece folders
# .gpu/p1 ... .gpu/pN, each strictly under 60 MiB so that one device call carries one piece
# plus the working tree (the device takes at most 64 MiB per call).
#
#   - vLLM: the official vllm==0.32.0 wheel (cp38-abi3, manylinux_2_28 x86_64) unpacked, less
#     the native libraries that a Qwen3.5 text engine on H200 with FA3 attention and Triton GDN
#     prefill never loads (FA2, vllm-rs, DeepGEMM, fmha_sm100, flashkda, deepselect, flashmla,
#     qutlass), then split into .tar.xz archives (xz -9 -T0): the Python tree with the four
#     small libraries, _C_stable_libtorch, _moe_C_stable_libtorch, vllm_flash_attn's FA3 lib;
#   - the pure and cp312 manylinux wheels (--no-deps) of what vLLM's engine path imports and
#     the GPU machine lacks, at the versions of requirements/cpu-dev.lock.
# The pieces go into the fewest folders the size limit allows (first-fit decreasing), spread
# evenly over them so that each leaves the most room for the working tree beside it.
# Each folder holds a PIECE file (build id, piece name, piece count, contents) that
# tools/gpu_engine_device.sh uses to tell which pieces it has already unpacked.
#
# Usage: tools/gpu_engine_prep.sh   (from anywhere: it works in the repository root; ~4 min the
#        first time, xz -9 of the libraries; seconds after that, the archives are cached)
# Env:   GPU_PREP_KEEP_STAGE=1 keeps the unpacked staging tree in .cache/gpu-stage.
set -euo pipefail
cd "$(dirname "$(realpath "$0")")/.."

DL=.cache/dl                 # pip's downloads (git-ignored: /.cache/)
WHEELS=$DL/gpu-engine        # the dependency wheels, one version of each
STAGE=.cache/gpu-stage       # scratch: the unpacked vLLM wheel and the archives
OUT=.gpu                     # the piece folders (ignored via .git/info/exclude, see below)
LOCK=requirements/cpu-dev.lock
VLLM_VERSION=0.32.0
LIMIT=$((60 * 1024 * 1024))  # bytes; every piece folder must stay strictly below this
PY=python3                   # any Python >= 3.8 with pip (pip vendors `packaging`)

# The dependency wheels, by PyPI name; each version comes from $LOCK. From the engine run in
# gpu-engine.md, plus annotated-doc (fastapi 0.136 requires and imports it). The list in the
# notes also names distro: openai 3.54 (the lock's) neither requires nor imports it.
DEPS=(
    pydantic pydantic-core annotated-types typing-inspection pydantic-extra-types pycountry
    fastapi annotated-doc starlette python-multipart
    msgspec pyzmq cbor2 cachetools pybase64 partial-json-parser
    openai httpx2 httpcore2 sniffio jiter truststore
    compressed-tensors xgrammar apache-tvm-ffi llguidance
    jsonschema referencing rpds-py jsonschema-specifications
    oss-harmony mistral_common lm-format-enforcer interegular outlines_core lark loguru dill
    email-validator dnspython
    opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions
    opentelemetry-semantic-conventions-ai
    blake3 depyf astor setproctitle ijson python-json-logger
    prometheus-fastapi-instrumentator watchfiles
)

# What the GPU machine has (gpu-engine.md), plus the dependencies those packages pull in
# themselves (assumed installed with them there: torch, transformers, huggingface_hub, httpx,
# aiohttp). The Requires-Dist check below counts these as satisfied.
GPU_HAS="torch==2.11.0 triton==3.6.0 transformers==5.17.0 tokenizers==0.23.2
huggingface-hub==1.33 safetensors numpy prometheus-client==0.26.0 aiohttp psutil pyyaml einops
sentencepiece tiktoken cloudpickle opencv-python-headless pillow requests
typing-extensions filelock fsspec jinja2 markupsafe networkx sympy mpmath setuptools packaging
regex tqdm httpx httpcore anyio h11 idna certifi hf-xet urllib3 charset-normalizer attrs
aiosignal frozenlist multidict yarl propcache aiohappyeyeballs"

# vLLM's own requirements (and those of the extras it asks for) that are not carried, and why;
# the check fails on any other.
VLLM_NOT_CARRIED="torch=the GPU machine's torch 2.11.0 runs vLLM's stable-ABI libraries
torchaudio=audio models only
torchvision=vision models only; not installed on the GPU machine, where the text engine ran
torchcodec=video/audio decoding only
flashinfer-python=engine args and env avoid it (gdn_prefill_backend=triton, FLASH_ATTN or TRITON_ATTN attention, VLLM_USE_FLASHINFER_SAMPLER=0)
apache-tvm-ffi=carried at the lock's 0.1.15.post2 (xgrammar's floor is 0.1.11; vLLM pins 0.1.11 for FlashInfer)
nvidia-cutlass-dsl=CuTe-DSL kernels (FlashInfer, gdn_chunk_cutedsl, quack) are not on this path
quack-kernels=CuTe-DSL kernels only
tilelang=TileLang kernels only
tokenspeed-mla=MLA models only
humming-kernels=quantized GEMMs only
nvidia-cudnn-frontend=FA-cute benchmarks only
nvtx=only imported when NVTX ranges are enabled (vllm/v1/utils.py)
fastsafetensors=optional load format
instanttensor=optional load format
pynvvideocodec=video decoding only
py-cpuinfo=usage stats only (the device script sets VLLM_NO_USAGE_STATS=1)
numba=n-gram speculative decoding and a few multimodal processors only
ninja=JIT builds of C++ extensions (FlashInfer) only
protobuf=no module of vLLM imports google.protobuf
six=no module of vLLM imports six
anthropic=Anthropic API server only
mcp=API server tool calling only
model-hosting-container-standards=SageMaker API server only
opentelemetry-exporter-otlp=trace export only
fastapi-cli=fastapi[standard] extra: the OpenAI API server only
fastar=fastapi[standard] extra: the OpenAI API server only
pydantic-settings=fastapi[standard] extra: the OpenAI API server only
uvicorn=fastapi[standard] extra: the OpenAI API server only"

# --- 1. downloads ---------------------------------------------------------------------------
lock_version() {  # the version $LOCK pins for a PyPI name (names compared PEP 503-normalised)
    local want
    want=$(echo "$1" | tr 'A-Z_.' 'a-z--')
    awk -F'==' -v want="$want" '!/^#/ && NF == 2 {
        n = tolower($1); gsub(/[-_.]+/, "-", n); if (n == want) { print $2; exit } }' "$LOCK"
}
pins=()
for name in "${DEPS[@]}"; do
    v=$(lock_version "$name")
    if [ -z "$v" ]; then echo "error: $name has no pin in $LOCK" >&2; exit 1; fi
    pins+=("$name==$v")
done
mkdir -p "$DL" "$WHEELS"
# Official wheel; pip keeps an already-downloaded file.
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 -d "$DL" \
    "vllm==$VLLM_VERSION"
VLLM_WHEEL=$DL/vllm-$VLLM_VERSION-cp38-abi3-manylinux_2_28_x86_64.whl
[ -f "$VLLM_WHEEL" ] || { echo "error: pip did not leave $VLLM_WHEEL" >&2; exit 1; }
# One version of each: drop wheels of these packages left from an earlier run with other pins.
rm -f "$WHEELS"/*.whl
# manylinux_2_31 is the newest tag accepted: llguidance 1.7.6 ships only that (cp39-abi3), so
# the GPU machine needs glibc >= 2.31 (the device script checks); all else is <= 2_28.
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform linux_x86_64 \
    -d "$WHEELS" "${pins[@]}"
got=("$WHEELS"/*.whl)
echo "downloaded ${#got[@]} dependency wheels for ${#DEPS[@]} pins"

# --- 2. Requires-Dist check: every requirement of a carried wheel (markers evaluated for
# CPython 3.12 on x86_64 Linux, extras followed) is carried, on the GPU machine, or, for vLLM
# itself, in VLLM_NOT_CARRIED; versions are checked where known. Fails otherwise.
GPU_HAS="$GPU_HAS" VLLM_NOT_CARRIED="$VLLM_NOT_CARRIED" "$PY" - "$VLLM_WHEEL" "$WHEELS" <<'EOF'
import os, re, sys, zipfile
from email.parser import Parser
from pathlib import Path
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip vendors packaging
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython"}

def metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if re.match(r"[^/]+\.dist-info/METADATA$", n))
        return Parser().parsestr(z.read(name).decode())

def pinned(spec):  # "name==1.2" or "name" -> (canonical name, version or None)
    name, _, version = spec.partition("==")
    return canonicalize_name(name), (version or None)

vllm_wheel, wheel_dir = sys.argv[1], Path(sys.argv[2])
carried = {}
for w in sorted(wheel_dir.glob("*.whl")):
    m = metadata(w)
    name = canonicalize_name(m["Name"])
    if name in carried:
        sys.exit(f"two versions of {name} in {wheel_dir}")
    carried[name] = (m["Version"], m.get_all("Requires-Dist") or [])
gpu = dict(pinned(s) for s in os.environ["GPU_HAS"].split())
not_carried = dict(line.split("=", 1) for line in os.environ["VLLM_NOT_CARRIED"].splitlines())
not_carried = {canonicalize_name(k): v for k, v in not_carried.items()}
vm = metadata(vllm_wheel)

def wanted(reqs, extras):
    for line in reqs:
        r = Requirement(line)
        if r.marker is None or any(r.marker.evaluate({**ENV, "extra": e}) for e in extras):
            yield r

problems, skipped = [], []
# (who, requirements, extras asked of it, asked by vLLM); extras asked of carried wheels are
# followed, and what an extra vLLM asks for needs may be left out like vLLM's own requirements
todo = [("vllm", vm.get_all("Requires-Dist"), {""}, True)]
todo += [(n, reqs, {""}, False) for n, (_, reqs) in carried.items()]
seen = set()
while todo:
    who, reqs, extras, by_vllm = todo.pop()
    for r in wanted(reqs, extras):
        n = canonicalize_name(r.name)
        if n in carried:
            version = carried[n][0]
            if (who, n, tuple(sorted(r.extras))) not in seen and r.extras:
                seen.add((who, n, tuple(sorted(r.extras))))
                todo.append((n, carried[n][1], set(r.extras), by_vllm))
        elif n in gpu:
            version = gpu[n]
        elif by_vllm and n in not_carried:
            skipped.append(f"  {r} ({who}): {not_carried[n]}")
            continue
        else:
            problems.append(f"{who} requires {r}: neither carried nor on the GPU machine")
            continue
        if version and r.specifier and not r.specifier.contains(version, prereleases=True):
            if by_vllm and n in not_carried:
                skipped.append(f"  {r} ({who}): {not_carried[n]} (have {version})")
            else:
                problems.append(f"{who} requires {r}; have {version}")
print("vLLM requirements left out on purpose:")
print("\n".join(sorted(set(skipped))))
if problems:
    sys.exit("Requires-Dist check failed:\n  " + "\n  ".join(sorted(set(problems))))
print(f"Requires-Dist check: {len(carried)} carried wheels, all requirements met")
EOF

# --- 3. vLLM's tree, less the libraries the engine does not load ------------------------------
# Left out (gpu-engine.md: the engine ran without them): FA2 (FA3 serves SM90), the Rust
# frontend binary, DeepGEMM and fmha_sm100 (their Python too), and the flashkda, deepselect,
# flashmla and qutlass kernel libraries. Kept: the Python tree and dist-info (version, entry
# points), and the native libraries below, each with the archive it travels in. Any other
# .so stops the script, so that a new library gets looked at instead of travelling silently.
LEFT_OUT=(
    'vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so' 'vllm/vllm-rs'
    'vllm/third_party/deep_gemm/*' 'vllm/third_party/fmha_sm100/*'
    'vllm/_flashkda_C.abi3.so' 'vllm/_deepselect_C.abi3.so' 'vllm/_flashmla_C.abi3.so'
    'vllm/_qutlass_C.abi3.so'
)
declare -A LIB_ARCHIVE=(
    [vllm/_C_stable_libtorch.abi3.so]=vllm-C
    [vllm/_moe_C_stable_libtorch.abi3.so]=vllm-moe
    [vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so]=vllm-fa3
    [vllm/cumem_allocator.abi3.so]=vllm-py   # the small ones (< 1 MB) go with the Python tree
    [vllm/fs_io_C.abi3.so]=vllm-py
    [vllm/spinloop.abi3.so]=vllm-py
    [vllm/_flashmla_extension_C.abi3.so]=vllm-py
)
rm -rf "$STAGE"
mkdir -p "$STAGE/tree" "$STAGE/items"
# xz -9 of the libraries takes minutes: the archives are kept per (vLLM wheel, the two lists
# above) and reused while neither changes.
ARCHIVES=.cache/gpu-archives/$( (sha256sum < "$VLLM_WHEEL"; declare -p LEFT_OUT LIB_ARCHIVE) \
    | sha256sum | cut -c1-16)
if [ -f "$ARCHIVES/done" ]; then
    echo "reusing the vLLM archives in $ARCHIVES"
else
    unzip -q "$VLLM_WHEEL" -d "$STAGE/tree" -x "${LEFT_OUT[@]}"
    found=$(cd "$STAGE/tree" && find . -name '*.so' -printf '%P\n' | sort)
    expected=$(printf '%s\n' "${!LIB_ARCHIVE[@]}" | sort)
    if [ "$found" != "$expected" ]; then
        echo "error: vLLM's native libraries differ from the expected set (< expected):" >&2
        diff <(echo "$expected") <(echo "$found") >&2 || true
        exit 1
    fi
    # file lists per archive: each library to its archive, every other file to vllm-py
    (cd "$STAGE/tree" && find . \( -type f -o -type l \) ! -name '*.so' -printf '%P\n') \
        > "$STAGE/vllm-py.list"
    for lib in "${!LIB_ARCHIVE[@]}"; do echo "$lib" >> "$STAGE/${LIB_ARCHIVE[$lib]}.list"; done
    for list in "$STAGE"/*.list; do
        name=$(basename "$list" .list)
        sort -o "$list" "$list"
        tar -C "$STAGE/tree" -cf - -T "$list" | xz -9 -T0 > "$STAGE/items/$name.tar.xz"
    done
    rm -rf .cache/gpu-archives  # one set at a time
    mkdir -p "$ARCHIVES"
    mv "$STAGE"/items/vllm-*.tar.xz "$ARCHIVES/"
    touch "$ARCHIVES/done"
fi
cp "$ARCHIVES"/vllm-*.tar.xz "$STAGE/items/"
cp "$WHEELS"/*.whl "$STAGE/items/"

# --- 4. pieces: the fewest folders strictly under $LIMIT, filled evenly --------------------
rm -rf "$OUT"
mkdir -p "$OUT"
# Never tracked, never in .gitignore (a tracked file): the clone's own exclude list.
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >> "$exclude"
BUILD="$(date -u +%Y%m%dT%H%M%SZ)-$(sha256sum "$VLLM_WHEEL" | cut -c1-8)"
"$PY" - "$STAGE/items" "$OUT" "$LIMIT" "$BUILD" <<'EOF'
import math, shutil, sys
from pathlib import Path
items, out, limit, build = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
RESERVE = 16 * 1024  # room for the PIECE file
files = sorted(items.iterdir(), key=lambda p: (-p.stat().st_size, p.name))
size = {f: f.stat().st_size for f in files}
cap = limit - RESERVE  # a piece's files must add up to less than this
big = [f.name for f in files if size[f] >= cap]
if big:
    sys.exit(f"too large for one piece: {big}")

def first_fit() -> list[list[Path]]:
    bins: list[list[Path]] = []
    for f in files:
        for b in bins:
            if sum(size[p] for p in b) + size[f] < cap:
                b.append(f)
                break
        else:
            bins.append([f])
    return bins

def balanced(n: int) -> list[list[Path]] | None:
    """Largest first into the emptiest piece: with the fewest pieces, the most headroom for
    the working tree that travels beside each one. None if a piece would overflow."""
    bins: list[list[Path]] = [[] for _ in range(n)]
    for f in files:
        b = min(bins, key=lambda b: sum(size[p] for p in b))
        if sum(size[p] for p in b) + size[f] >= cap:
            return None
        b.append(f)
    return bins

pieces = first_fit()  # fewest pieces (first-fit decreasing), then spread evenly over them
pieces = balanced(len(pieces)) or pieces
pieces.sort(key=lambda b: -sum(size[p] for p in b))
floor = math.ceil(sum(size.values()) / cap)
if len(pieces) > floor:
    print(f"note: {len(pieces)} pieces; the size bound allows no fewer than {floor}")
for i, piece in enumerate(pieces, 1):
    d = out / f"p{i}"
    d.mkdir()
    for f in piece:
        shutil.move(str(f), d / f.name)
    lines = [f"build {build}", f"piece p{i}", f"of {len(pieces)}"]
    lines += [f"file {f.name}" for f in sorted(piece)]
    (d / "PIECE").write_text("\n".join(lines) + "\n")
    total = sum(p.stat().st_size for p in d.iterdir())
    assert total < limit, (d, total)
EOF
[ "${GPU_PREP_KEEP_STAGE:-0}" = 1 ] || rm -rf "$STAGE"

# --- 5. report -------------------------------------------------------------------------------
dirs=("$OUT"/p*)
n=${#dirs[@]}
echo
echo "build $BUILD: $n pieces (limit: strictly under $LIMIT bytes each)"
for d in "${dirs[@]}"; do
    bytes=$(du -sb --apparent-size "$d" | cut -f1)  # files + the folder entry itself
    mib=$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }')
    archives=$(sed -n 's/^file \(.*\.tar\.xz\)$/\1/p' "$d/PIECE" | tr '\n' ' ')
    wheels=$(grep -c '\.whl$' "$d/PIECE" || true)
    printf '  %s  %10d bytes  %6s MiB  %s+ %s wheels\n' "$d" "$bytes" "$mib" "$archives" "$wheels"
    if [ "$bytes" -ge "$LIMIT" ]; then echo "error: $d is not under the limit" >&2; exit 1; fi
done
echo
echo "On the GPU machine, one piece per call, all within one warm period (the unpacked site"
echo "lives in /tmp/gdn-engine, which a fresh machine does not have):"
for d in "${dirs[@]}"; do
    echo "  run(carry=[\"$d\"], command=\"bash tools/gpu_engine_device.sh\")"
done
echo "then, with every piece unpacked (carry nothing more):"
echo "  run(command=\"bash tools/gpu_engine_device.sh -- python3 YOUR_SCRIPT.py\")"
echo "(a command may also ride along with the last piece: carry it and add ' -- CMD')"
