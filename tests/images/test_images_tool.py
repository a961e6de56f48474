"""tools/images.py (`make images`, `make push`): names from the catalogue, the engine that
works, and a clear refusal where none does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.images.support import IMAGES, REGISTRY, ROOT, VERSION, images_tool


def run_tool(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools/images.py"), *args],
        capture_output=True,
        text=True,
        env=env,
    )


def test_without_an_engine_it_says_so_and_builds_nothing(tmp_path: Path) -> None:
    """A PATH with no docker, podman or buildah: the real situation of a machine without one."""
    env = {**os.environ, "PATH": str(tmp_path)}
    result = run_tool("build", env=env)
    assert result.returncode == 2
    assert "no working container engine here (tried docker, podman, buildah)" in result.stderr
    assert "+ " not in result.stdout  # no build command was started


def test_a_docker_client_without_daemon_does_not_count(tmp_path: Path) -> None:
    """`docker info` fails without a daemon: the probe runs it rather than trusting the PATH."""
    fake = tmp_path / "docker"  # a stand-in client that, like a daemon-less docker, fails `info`
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": str(tmp_path), "ENGINE": "docker"}
    result = run_tool("push", env=env)
    assert result.returncode == 2
    assert "tried docker" in result.stderr


def test_list_uses_the_catalogue_and_the_overrides() -> None:
    env = {**os.environ, "REGISTRY": "registry.example.com/team", "TAG": "9.9"}
    listed = run_tool("list", env=env).stdout.split()
    assert listed == [f"registry.example.com/team/{image.name}:9.9" for image in IMAGES]
    defaults = run_tool(
        "list",
        "gdn-operator",
        env={k: v for k, v in os.environ.items() if k not in {"REGISTRY", "TAG"}},
    )
    assert defaults.stdout.split() == [f"{REGISTRY}/gdn-operator:{VERSION}"]
    assert run_tool("list", "nope", env=dict(os.environ)).returncode != 0


def test_engine_choice_and_commands() -> None:
    answers = {"docker": False, "podman": True, "buildah": True}
    works = lambda command: answers[command[0]]  # noqa: E731
    assert images_tool.pick_engine(works, None) == "podman"
    assert images_tool.pick_engine(works, "buildah") == "buildah"
    assert images_tool.pick_engine(works, "docker") is None
    image = IMAGES[0]
    assert images_tool.build_command("buildah", image, "r/x:1")[:2] == ["buildah", "bud"]
    assert images_tool.build_command("docker", image, "r/x:1") == [
        "docker",
        "build",
        "--file",
        image.dockerfile,
        "--tag",
        "r/x:1",
        str(ROOT),
    ]
    assert all((ROOT / i.dockerfile).is_file() and (ROOT / i.lock).is_file() for i in IMAGES)
