"""How often and how soon a failed upstream call is tried again.

A retry budget keeps retries a bounded share of traffic: when an upstream is down, every
request retrying ``max_attempts`` times would multiply the load on it exactly when it can
least take it (the "retry storm"). Over a sliding window, retries may be ``ratio`` of the
requests, or ``minimum`` whatever the traffic (Envoy's retry budget: 20 %, a floor of 3), so
upstream attempts stay within ``(1 + ratio)`` times the requests, plus that floor.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

_SLOTS = 10  # the window slides a tenth at a time


class RetryBudget:
    """The retries a sliding window of requests has earned.

    >>> budget = RetryBudget(ratio=0.2, minimum=3, window=10.0)
    >>> budget.record_request()
    >>> budget.try_spend()
    True
    """

    def __init__(
        self,
        ratio: float,
        minimum: int,
        *,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ratio = ratio
        self._minimum = minimum
        self._clock = clock
        self._span = window / _SLOTS
        # Per slot: which tick of the clock it counts, and its requests and retries.
        self._ticks = [-_SLOTS] * _SLOTS
        self._requests = [0] * _SLOTS
        self._retries = [0] * _SLOTS

    def _slot(self) -> tuple[int, int]:
        tick = int(self._clock() / self._span)
        slot = tick % _SLOTS
        if self._ticks[slot] != tick:
            self._ticks[slot] = tick
            self._requests[slot] = 0
            self._retries[slot] = 0
        return slot, tick

    def record_request(self) -> None:
        slot, _ = self._slot()
        self._requests[slot] += 1

    def try_spend(self) -> bool:
        slot, tick = self._slot()
        requests = retries = 0
        for i, counted in enumerate(self._ticks):
            if tick - counted < _SLOTS:
                requests += self._requests[i]
                retries += self._retries[i]
        if retries >= max(self._minimum, self._ratio * requests):
            return False
        self._retries[slot] += 1
        return True


def backoff_delay(failures: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: spreads the retries of many clients apart."""
    return rng.uniform(0.0, min(cap, base * 2 ** (failures - 1)))
