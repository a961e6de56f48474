"""Build and push the project's container images (`make images`, `make push`).

Names, Dockerfiles and locks come from images/images.toml; the tag is the project's version.
The first container engine that answers is used: Docker, Podman, then Buildah (`ENGINE=podman`
picks one). Where none works, this says so and exits 2, building nothing.

    python tools/images.py list                 # the references it would build
    python tools/images.py build [NAME ...]     # all images, or the named ones
    python tools/images.py push [NAME ...]
Environment: REGISTRY (default: the catalogue's), TAG (default: the project's version), ENGINE.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "images" / "images.toml"
# Each engine and the command that tells whether it can build here (a client without a daemon,
# like a docker CLI with no dockerd, fails it).
ENGINES = {
    "docker": ["docker", "info"],
    "podman": ["podman", "info"],
    "buildah": ["buildah", "info"],
}
NO_ENGINE = (
    "make images: no working container engine here (tried {tried}).\n"
    "Install Docker, Podman or Buildah (and start the Docker daemon), or build on a machine that"
    " has one:\n  make images REGISTRY=registry.example.com/team && make push"
    " REGISTRY=registry.example.com/team"
)


@dataclass(frozen=True)
class Image:
    name: str
    dockerfile: str
    lock: str
    chart_value: str | None

    def ref(self, registry: str, tag: str) -> str:
        return f"{registry}/{self.name}:{tag}"


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def catalogue() -> tuple[str, list[Image]]:
    """(default registry, images) from images/images.toml."""
    data = tomllib.loads(CATALOGUE.read_text())
    images = [
        Image(name, spec["dockerfile"], spec["lock"], spec.get("chart_value"))
        for name, spec in data["images"].items()
    ]
    return data["registry"], images


def pick_engine(works: Callable[[list[str]], bool], wanted: str | None) -> str | None:
    """The first engine whose probe succeeds (only `wanted`, if given)."""
    names = [wanted] if wanted else list(ENGINES)
    return next((name for name in names if name in ENGINES and works(ENGINES[name])), None)


def probe(command: list[str]) -> bool:
    if shutil.which(command[0]) is None:
        return False
    return subprocess.run(command, capture_output=True).returncode == 0


def build_command(engine: str, image: Image, ref: str) -> list[str]:
    """One image, from the repository root as context (the Dockerfiles copy the locks and the
    sources from there; .dockerignore keeps .cache and .git out)."""
    verb = ["bud"] if engine == "buildah" else ["build"]
    return [engine, *verb, "--file", image.dockerfile, "--tag", ref, str(ROOT)]


def push_command(engine: str, ref: str) -> list[str]:
    return [engine, "push", ref]


def selected(images: list[Image], names: list[str]) -> list[Image]:
    unknown = sorted(set(names) - {image.name for image in images})
    if unknown:
        raise SystemExit(f"images: unknown image(s) {unknown}; known: {[i.name for i in images]}")
    return [image for image in images if not names or image.name in names]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"list", "build", "push"}:
        print(__doc__)
        return 2
    default_registry, images = catalogue()
    registry = os.environ.get("REGISTRY") or default_registry
    tag = os.environ.get("TAG") or project_version()
    chosen = selected(images, argv[1:])
    if argv[0] == "list":
        for image in chosen:
            print(image.ref(registry, tag))
        return 0
    engine = pick_engine(probe, os.environ.get("ENGINE") or None)
    if engine is None:
        tried = os.environ.get("ENGINE") or ", ".join(ENGINES)
        print(NO_ENGINE.format(tried=tried), file=sys.stderr)
        return 2
    for image in chosen:
        ref = image.ref(registry, tag)
        command = build_command(engine, image, ref)
        if argv[0] == "push":
            command = push_command(engine, ref)
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
