"""The retry budget: retries stay a share of requests over a sliding window, with a floor."""

from __future__ import annotations

import random

from chatgpt_proxy.upstream.retry import RetryBudget, backoff_delay


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _spend_all(budget: RetryBudget) -> int:
    spent = 0
    while budget.try_spend():
        spent += 1
    return spent


def test_the_floor_allows_a_few_retries_without_traffic() -> None:
    budget = RetryBudget(0.2, 3, window=10.0, clock=Clock())
    assert _spend_all(budget) == 3


def test_retries_stay_a_share_of_requests() -> None:
    clock = Clock()
    budget = RetryBudget(0.2, 3, window=10.0, clock=clock)
    retries = 0
    for _ in range(100):
        budget.record_request()
        retries += budget.try_spend()
        budget.try_spend()  # every request wants two
    assert retries <= 0.2 * 100 + 3
    assert _spend_all(budget) == 0


def test_the_window_slides() -> None:
    clock = Clock()
    budget = RetryBudget(0.2, 3, window=10.0, clock=clock)
    for _ in range(50):
        budget.record_request()
    assert _spend_all(budget) == 10
    clock.now += 5.0
    assert _spend_all(budget) == 0  # the same window
    clock.now += 5.0
    assert _spend_all(budget) == 3  # the requests and retries have aged out: the floor again


def test_backoff_is_jittered_and_capped() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, 0.1, 1.0, rng) for n in range(1, 10)]
    assert all(0 <= d <= 1.0 for d in delays)
    assert len(set(delays)) == len(delays)
