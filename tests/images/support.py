"""What the image tests share: the catalogue, the Dockerfiles parsed into stages, the locks."""

from __future__ import annotations

import importlib.util
import io
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
WHEEL_BUILD_LOCK = "requirements/wheel-build.lock"


def load_tool(name: str) -> ModuleType:
    """A script of tools/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"{name}_tool", ROOT / "tools" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


images_tool = load_tool("images")
lock_tool = load_tool("lock")
REGISTRY, IMAGES = images_tool.catalogue()
VERSION = images_tool.project_version()


def lock_pins(path: str | Path) -> dict[str, str]:
    return lock_tool.read_pins((ROOT / path).read_text())


@dataclass
class Stage:
    base: str  # the FROM image as written
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, value)


def stages(dockerfile_text: str) -> list[Stage]:
    # from memory: with a path (its default is ./Dockerfile) the parser writes content there
    parser = DockerfileParser(fileobj=io.BytesIO(dockerfile_text.encode()))
    found: list[Stage] = []
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "FROM":
            words = [w for w in value.split() if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            found.append(Stage(words[0], name))
        elif instruction != "COMMENT" and found:
            found[-1].instructions.append((instruction, value))
    return found


def pip_installs(run: str) -> list[list[str]]:
    """The argument lists of every `pip install` in a RUN command."""
    commands: list[list[str]] = []
    for part in run.replace("&&", ";").replace("||", ";").split(";"):
        words = shlex.split(part)
        for i, word in enumerate(words):
            if word.endswith("pip") and words[i + 1 : i + 2] == ["install"]:
                commands.append(words[i + 2 :])
    return commands
