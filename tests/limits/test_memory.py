"""The in-memory limiter with a clock the test moves: the window slides, days roll over."""

from __future__ import annotations

import asyncio
from datetime import datetime

from limits_rig import Rig


def test_the_window_slides_one_request_at_a_time(memory_rig: Rig) -> None:
    rig = memory_rig
    key = rig.key(rpm=2)
    rig.finish(rig.admit(key, 1), 1)
    rig.clock.now += 20
    rig.finish(rig.admit(key, 1), 1)
    rig.clock.now += 10
    error = rig.refused(key, 1)
    assert error.headers["retry-after"] == "30"  # the first request leaves the window at +60
    assert error.headers["x-ratelimit-reset-requests"] == "30s"
    rig.clock.now += 30
    admission = rig.admit(key, 1)  # the first one left; the second is still in
    assert admission.headers["x-ratelimit-remaining-requests"] == "0"
    assert admission.headers["x-ratelimit-reset-requests"] == "20s"


def test_tpm_retry_after_is_when_enough_tokens_have_left(memory_rig: Rig) -> None:
    rig = memory_rig
    key = rig.key(tpm=100)
    rig.finish(rig.admit(key, 30), 30)
    rig.clock.now += 10
    rig.finish(rig.admit(key, 30), 30)
    rig.clock.now += 10
    rig.finish(rig.admit(key, 30), 30)
    error = rig.refused(key, 50)  # 90 + 50 > 100: 40 must leave, i.e. the first two entries
    assert error.headers["retry-after"] == "50"


def test_a_late_settlement_leaves_the_window_alone(memory_rig: Rig) -> None:
    rig = memory_rig
    key = rig.key(tpm=100)
    long_stream = rig.admit(key, 80)
    rig.clock.now += 61  # the stream outlives its minute: its reservation has left the window
    second = rig.admit(key, 90)
    rig.finish(long_stream, 5)
    assert second.headers["x-ratelimit-remaining-tokens"] == "10"
    rig.finish(rig.admit(key, 10), 10)  # 90 + 10: exactly the limit
    assert rig.refused(key, 1).code == "rate_limit_exceeded"


def test_a_daily_budget_renews_on_the_next_utc_day(memory_rig: Rig) -> None:
    rig = memory_rig
    key = rig.key(daily_token_budget=10, total_token_budget=1_000)
    rig.finish(rig.admit(key, 5), 15)
    assert rig.refused(key, 1).code == "insufficient_quota"
    rig.wall += 86_400
    rig.finish(rig.admit(key, 5), 5)


def test_requests_arriving_together_read_the_store_once(memory_rig: Rig) -> None:
    rig = memory_rig
    key = rig.key(total_token_budget=1_000, daily_token_budget=1_000)
    calls = []
    original = rig.store.usage.totals

    async def counting(key_id: str, since: datetime | None = None) -> tuple[int, float]:
        calls.append((key_id, since))
        await asyncio.sleep(0.05)  # a slow store is the point: the others arrive meanwhile
        return await original(key_id, since)

    rig.store.usage.totals = counting  # type: ignore[method-assign]

    async def burst() -> None:
        await asyncio.gather(*(rig.limiter.admit(key, 1) for _ in range(10)))

    rig.loop.run(burst())
    assert len(calls) == 2  # the total, and today's


def test_release_twice_frees_one_slot(memory_rig: Rig) -> None:
    rig = memory_rig
    key = rig.key(max_concurrency=1)
    admission = rig.admit(key, 1)
    rig.finish(admission, 1)
    rig.loop.run(admission.release())
    rig.admit(key, 1)
    assert rig.refused(key, 1).code == "rate_limit_exceeded"
