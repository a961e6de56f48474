"""Spread requests over the arch deployments of one model by their load.

Pure and synchronous: the ingress replica runs one event loop, so no locking is needed. Load is
the number of requests in flight on an arch divided by its capacity (its replica count), so an
arch with twice the replicas takes twice the requests; ties rotate, so a trickle of requests
reaches every arch.
"""

from __future__ import annotations

from collections.abc import Mapping


class LeastLoaded:
    def __init__(self, capacity: Mapping[str, float]) -> None:
        if not capacity or min(capacity.values()) <= 0:
            raise ValueError(f"every arch needs a positive capacity, got {dict(capacity)}")
        self._capacity = dict(capacity)
        self._order = list(capacity)
        self._inflight = dict.fromkeys(capacity, 0)
        self._last = len(self._order) - 1

    def acquire(self) -> str:
        """Choose the arch for a new request and count it in flight there."""
        count = len(self._order)

        def key(index: int) -> tuple[float, int]:
            arch = self._order[index]
            load = (self._inflight[arch] + 1) / self._capacity[arch]
            return load, (index - self._last - 1) % count  # ties: the next arch in turn

        index = min(range(count), key=key)
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
