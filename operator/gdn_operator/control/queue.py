"""The work queue between watches and reconcilers, in client-go's shape.

Keyed by object (`namespace/name`): adding a key that is already waiting does nothing, and a key
is never handed to two workers at once; one added while it is being processed is handed out again
when that worker is done. Failed keys come back after a per-key exponential backoff (with jitter,
honouring Retry-After), delayed keys after their delay. Concurrency is bounded by the number of
workers calling `get`.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable

from gdn_operator.kube.backoff import Backoff


class WorkQueue:
    def __init__(
        self,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self.backoff = backoff or Backoff(base_s=0.5, cap_s=300.0)
        self.clock = clock
        self.on_depth = on_depth or (lambda _depth: None)
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()  # waiting to be processed (queued, or re-added while busy)
        self._processing: set[str] = set()
        self._delayed: list[tuple[float, str]] = []  # heap of (due time, key)
        self._failures: dict[str, int] = {}
        self._cond = threading.Condition()
        self._shutdown = False

    def add(self, key: str) -> None:
        with self._cond:
            self._add_locked(key)

    def add_after(self, key: str, delay_s: float) -> None:
        if delay_s <= 0:
            self.add(key)
            return
        with self._cond:
            heapq.heappush(self._delayed, (self.clock() + delay_s, key))
            self._cond.notify()

    def add_rate_limited(self, key: str, retry_after_s: float | None = None) -> float:
        """Re-queue a failed key after its backoff; returns the delay chosen."""
        with self._cond:
            self._failures[key] = self._failures.get(key, 0) + 1
            attempt = self._failures[key]
        delay = self.backoff.delay(attempt, retry_after_s)
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        """The key succeeded: its next failure starts the backoff from the beginning."""
        with self._cond:
            self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        with self._cond:
            return self._failures.get(key, 0)

    def get(self, timeout_s: float | None = None) -> str | None:
        """The next key to process, or None on shutdown or timeout. Call `done` afterwards."""
        deadline = None if timeout_s is None else self.clock() + timeout_s
        with self._cond:
            while True:
                self._promote_due()
                if self._queue:
                    key = self._queue.popleft()
                    self._dirty.discard(key)
                    self._processing.add(key)
                    self.on_depth(len(self._queue))
                    return key
                if self._shutdown:
                    return None
                wait = self._wait_time(deadline)
                if wait is not None and wait <= 0:
                    return None
                self._cond.wait(wait)

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._cond.notify()
            self.on_depth(len(self._queue))

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def _add_locked(self, key: str) -> None:
        if self._shutdown or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._cond.notify()
        self.on_depth(len(self._queue))

    def _promote_due(self) -> None:
        now = self.clock()
        while self._delayed and self._delayed[0][0] <= now:
            _, key = heapq.heappop(self._delayed)
            self._add_locked(key)

    def _wait_time(self, deadline: float | None) -> float | None:
        now = self.clock()
        waits = [
            t - now
            for t in (deadline, self._delayed[0][0] if self._delayed else None)
            if t is not None
        ]
        return min(waits) if waits else None
