"""Exponential backoff with jitter that honours the server's Retry-After."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base_s: float = 0.5
    cap_s: float = 300.0
    jitter: float = 0.2  # +-20 %: replicas and keys retrying together spread out

    def delay(
        self,
        attempt: int,
        retry_after_s: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """Seconds to wait before retry number `attempt` (1-based).

        The server's Retry-After (429, 503) is a floor: retrying sooner only earns another
        refusal.
        """
        exp = min(self.cap_s, self.base_s * 2 ** max(0, attempt - 1))
        delay = exp * (1 + self.jitter * (2 * rand() - 1))
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        return max(0.0, delay)
