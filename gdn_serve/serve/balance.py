"""Spread requests over the arch deployments of one model by their load and their health.

Pure and synchronous: the ingress replica runs one event loop, so no locking is needed. Load is
the number of requests in flight on an arch divided by its live replicas (running, as Serve's
controller last reported), so an arch with twice the running replicas takes twice the
requests; ties rotate, so a trickle of requests reaches every arch. An arch whose health probe
or request failed, or with no running replica, is out of the choice until a health round finds
it healthy again. Before the first round every arch counts as one healthy replica.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ArchHealth:
    """One health round's finding for an arch."""

    healthy: bool  # its deployment answered the health probe
    live_replicas: int | None  # RUNNING replicas; None: the controller could not be asked

    @property
    def serving(self) -> bool:
        return self.healthy and self.live_replicas != 0


class LeastLoaded:
    def __init__(self, archs: Sequence[str]) -> None:
        if not archs or len(set(archs)) != len(archs):
            raise ValueError(f"archs must be distinct and at least one, got {list(archs)}")
        self._order = list(archs)
        self._capacity = dict.fromkeys(archs, 1.0)
        self._out: set[str] = set()
        self._inflight = dict.fromkeys(archs, 0)
        self._last = len(self._order) - 1

    def observe(self, health: Mapping[str, ArchHealth]) -> None:
        """Apply a health round: serving archs come (back) in, weighted by live replicas; the
        others go out. An arch the round did not cover keeps its state."""
        for arch, found in health.items():
            if arch not in self._capacity:
                raise ValueError(f"health of unknown arch {arch!r}")
            if not found.serving:
                self._out.add(arch)
                continue
            self._out.discard(arch)
            if found.live_replicas is not None:
                self._capacity[arch] = float(found.live_replicas)

    def failed(self, arch: str) -> None:
        """A request to `arch` failed: out of the choice until a round finds it healthy."""
        self._out.add(arch)

    def choosable(self) -> list[int]:
        """Indexes of the archs in the choice; all of them when none is healthy (better to try
        than refuse: a deployment that is back answers before the next round says so)."""
        healthy = [i for i, arch in enumerate(self._order) if arch not in self._out]
        return healthy or list(range(len(self._order)))

    def acquire(self) -> str:
        """Choose the arch for a new request and count it in flight there."""
        count = len(self._order)

        def key(index: int) -> tuple[float, int]:
            arch = self._order[index]
            load = (self._inflight[arch] + 1) / self._capacity[arch]
            return load, (index - self._last - 1) % count  # ties: the next arch in turn

        index = min(self.choosable(), key=key)
        self._last = index
        arch = self._order[index]
        self._inflight[arch] += 1
        return arch

    def release(self, arch: str) -> None:
        if self._inflight[arch] <= 0:
            raise ValueError(f"release of {arch!r} without a request in flight")
        self._inflight[arch] -= 1

    def in_flight(self) -> dict[str, int]:
        return dict(self._inflight)

    def out(self) -> set[str]:
        return set(self._out)


def live_replicas(replica_states: Mapping[Any, int]) -> int:
    """RUNNING replicas of a deployment, from Serve's `replica_states` (state to count; Serve's
    `ReplicaState` is a str enum, equal to its value)."""
    return sum(n for state, n in replica_states.items() if state == "RUNNING")
