"""A key pool for tests: a clock the test moves and a seeded RNG."""

from __future__ import annotations

import random

from chatgpt_proxy.upstream.pool import KeyPool, UpstreamKey


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_pool(
    n: int = 3, clock: FakeClock | None = None, **kwargs: object
) -> tuple[KeyPool, FakeClock]:
    clock = clock or FakeClock()
    secrets = [f"sk-secret-{i:04d}-xyz" for i in range(n)]
    pool = KeyPool("openai", secrets, clock=clock, rng=random.Random(0), **kwargs)  # type: ignore[arg-type]
    return pool, clock


def take(pool: KeyPool, exclude: tuple[str, ...] = ()) -> UpstreamKey:
    key = pool.acquire(exclude)
    pool.release(key)
    return key
