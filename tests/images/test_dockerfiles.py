"""The Dockerfiles, parsed (dockerfile-parse): non-root final stages, pinned bases, and every
package installed from the image's lock with --no-deps (so each version is the lock's)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.images.support import (
    IMAGES,
    ROOT,
    WHEEL_BUILD_LOCK,
    Stage,
    lock_pins,
    lock_tool,
    pip_installs,
    stages,
)

PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)$")
ROOT_USERS = {"", "root", "0"}


def base_problems(all_stages: list[Stage]) -> list[str]:
    """Every base image that is not an earlier stage carries an explicit tag that is not latest."""
    names = {s.name for s in all_stages if s.name}
    problems = []
    for stage in all_stages:
        if stage.base in names:
            continue
        last = stage.base.split("@")[0].rsplit("/", 1)[-1]
        tag = last.partition(":")[2]
        if "$" in stage.base or not tag or tag == "latest":
            problems.append(f"FROM {stage.base}: pin an explicit tag (not latest)")
    return problems


def user_problems(final: Stage) -> list[str]:
    users = [value for instruction, value in final.instructions if instruction == "USER"]
    if not users:
        return ["final stage sets no USER: it would run as root"]
    user = users[-1].split(":")[0].strip()
    return [f"final stage runs as USER {users[-1]!r}"] if user in ROOT_USERS else []


def locked(word: str, pins: dict[str, str]) -> bool:
    """`name==version` as the lock pins it."""
    match = PIN.match(word)
    return match is not None and pins.get(match[1].lower()) == match[2]


def install_problems(stage: Stage, allowed_locks: dict[str, dict[str, str]]) -> list[str]:
    """Each pip install: --no-deps, from a lock COPY'd from requirements/ that this image may use,
    or the project's wheel; any `name==version` must be the lock's."""
    copied = {}  # file name in the image -> lock path in the repository
    for instruction, value in stage.instructions:
        if instruction == "COPY" and not value.startswith("--from"):
            *sources, dest = value.split()
            for source in (s for s in sources if s.startswith("requirements/")):
                name = Path(source).name if dest.endswith("/") else Path(dest).name
                copied[name] = source
    pins = {name: v for lock in allowed_locks.values() for name, v in lock.items()}
    problems = []
    for instruction, value in stage.instructions:
        for args in pip_installs(value) if instruction == "RUN" else []:
            if "--no-deps" not in args:
                problems.append(f"pip install {' '.join(args)}: without --no-deps")
            words = iter(args)
            for word in words:
                if word in {"-r", "--requirement"}:
                    lock = copied.get(Path(next(words)).name)
                    if lock not in allowed_locks:
                        problems.append(f"pip install -r {lock}: not this image's lock")
                elif word in {"--extra-index-url", "--index-url"}:
                    next(words)
                elif not (word.startswith("-") or word == "/tmp/dist/*.whl" or locked(word, pins)):
                    problems.append(f"pip install {word}: not from the lock")
    return problems


def dockerfile_problems(text: str, lock: str) -> list[str]:
    found = stages(text)
    allowed = {WHEEL_BUILD_LOCK: lock_pins(WHEEL_BUILD_LOCK), lock: lock_pins(lock)}
    problems = base_problems(found) + user_problems(found[-1])
    for stage in found:
        problems += install_problems(stage, allowed)
    return problems


@pytest.mark.parametrize("image", IMAGES, ids=lambda i: i.name)
def test_dockerfile_is_pinned_non_root_and_installs_its_lock(image) -> None:
    text = (ROOT / image.dockerfile).read_text()
    assert dockerfile_problems(text, image.lock) == []
    # the final venv is installed from the catalogue's lock, not only allowed to be
    assert f"COPY {image.lock} " in text


def test_the_wheel_stage_is_the_same_everywhere() -> None:
    """Each Dockerfile builds the project's wheel in its own first stage (Dockerfiles cannot
    share a stage); this keeps the copies from drifting apart."""
    wheel_stages = {
        image.name: next(
            s for s in stages((ROOT / image.dockerfile).read_text()) if s.name == "wheel"
        )
        for image in IMAGES
    }
    first = next(iter(wheel_stages.values()))
    assert all(
        (s.base, s.instructions) == (first.base, first.instructions) for s in wheel_stages.values()
    )


BAD = """\
FROM python:3.11.14-slim-bookworm AS wheel
FROM python:latest AS venv
COPY requirements/cpu-dev.lock /tmp/x.lock
RUN pip install --no-deps -r /tmp/x.lock && pip install requests==0.0.1 \\
    && pip install --no-deps pyyaml==6.0.3
FROM ubuntu
USER root
"""


def test_negative_control_each_check_fires() -> None:
    problems = dockerfile_problems(BAD, "requirements/operator.lock")
    assert "FROM python:latest: pin an explicit tag (not latest)" in problems
    assert "FROM ubuntu: pin an explicit tag (not latest)" in problems
    assert "final stage runs as USER 'root'" in problems
    assert "pip install -r requirements/cpu-dev.lock: not this image's lock" in problems
    assert "pip install requests==0.0.1: without --no-deps" in problems
    assert "pip install requests==0.0.1: not from the lock" in problems
    # a pin that is the lock's passes
    assert not [p for p in problems if "pyyaml" in p]
    assert user_problems(stages("FROM scratch\n")[-1]) == [
        "final stage sets no USER: it would run as root"
    ]


def python_problems(text: str, python: str) -> list[str]:
    """The final stage runs the Python the lock was resolved for: a python:X.Y image, or
    pythonX.Y installed from the distribution."""
    final = stages(text)[-1]
    runs = " ".join(value for instruction, value in final.instructions if instruction == "RUN")
    if final.base.startswith(f"python:{python}.") or f"python{python} " in f"{runs} ":
        return []
    return [f"final stage ({final.base}) does not run the lock's Python {python}"]


@pytest.mark.parametrize("image", IMAGES, ids=lambda i: i.name)
def test_final_stage_runs_the_locks_python(image) -> None:
    (target,) = [t for t in lock_tool.TARGETS.values() if t.path == ROOT / image.lock]
    assert python_problems((ROOT / image.dockerfile).read_text(), target.python) == []


def test_negative_control_another_python_is_seen() -> None:
    text = (ROOT / "images/operator/Dockerfile").read_text().replace("python:3.11.", "python:3.12.")
    assert python_problems(text, "3.11") == [
        "final stage (python:3.12.14-slim-bookworm) does not run the lock's Python 3.11"
    ]
    cuda = (ROOT / "images/serve-cuda/Dockerfile").read_text()
    assert python_problems(cuda, "3.11") != [] and python_problems(cuda, "3.12") == []
