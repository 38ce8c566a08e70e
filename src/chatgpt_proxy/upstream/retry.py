"""How often and how soon a failed upstream call is tried again.

A retry budget keeps retries a bounded share of traffic: when an upstream is down, every
request retrying ``max_attempts`` times would multiply the load on it exactly when it can
least take it (the "retry storm"). Each request earns ``ratio`` of a retry; a floor of
``min_per_second`` keeps light traffic retrying normally.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class RetryBudget:
    """A token bucket of retries.

    >>> budget = RetryBudget(ratio=0.2, min_per_second=10)
    >>> budget.record_request()
    >>> budget.try_spend()
    True
    """

    def __init__(
        self,
        ratio: float,
        min_per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ratio = ratio
        self._min_per_second = min_per_second
        self._clock = clock
        # At most ten seconds' worth of the floor, so a quiet spell does not bank a storm.
        self._cap = max(1.0, 10.0 * min_per_second)
        self._tokens = self._cap
        self._updated = clock()

    def record_request(self) -> None:
        self._tokens = min(self._cap, self._tokens + self._ratio)

    def try_spend(self) -> bool:
        now = self._clock()
        self._tokens = min(self._cap, self._tokens + (now - self._updated) * self._min_per_second)
        self._updated = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


def backoff_delay(failures: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: spreads the retries of many clients apart."""
    return rng.uniform(0.0, min(cap, base * 2 ** (failures - 1)))
