"""What `gdn-serve backends` prints: the local arch, each backend's verdict, and the choice."""

from __future__ import annotations

from gdn_serve import envs
from gdn_serve.backends import registry, rules


def describe_local_choice(requested: str | None = None) -> str:
    """A few lines a person can read: arch, every backend's verdict per state dtype, the pick
    (or why a forced backend cannot run)."""
    arch = registry.local_arch()
    available = registry.available_backends()
    forced = registry.requested_backend(requested)
    lines = [
        f"device arch: {arch}",
        f"requested:   {forced} (set {envs.BACKEND.name} to force one)",
    ]
    for state_dtype in rules.STATE_DTYPES:
        pref = rules.preference_for(arch, state_dtype)
        lines.append(f"{state_dtype} state: {' > '.join(pref.order)} ({pref.source})")
        for backend in registry.BACKENDS.values():
            ok, reason = backend.verify(arch, state_dtype, available=available)
            lines.append(f"  {'ok ' if ok else 'no '} {backend.name:<13} {reason}")
        lines.append(f"  -> {_choice(forced, state_dtype)}")
    return "\n".join(lines)


def _choice(requested: str, state_dtype: str) -> str:
    try:
        resolution = registry.select_backend(requested, state_dtype=state_dtype)
    except ValueError as err:
        return f"error: {err}"
    return f"{resolution.active}: {resolution.reason}"
