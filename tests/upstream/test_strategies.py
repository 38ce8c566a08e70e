"""The key-choosing strategies, each in a pool of keys in every state: fair turns, fewest in
flight, most room left, uniform draws, and never an unusable key."""

from __future__ import annotations

from collections import Counter

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from pool_rig import make_pool, take

from chatgpt_proxy.errors import UpstreamRateLimited
from chatgpt_proxy.upstream.pool import KeyPool, UpstreamKey


def test_round_robin_is_fair() -> None:
    pool, _ = make_pool(4)
    counts = Counter(take(pool).alias for _ in range(400))
    assert counts == {f"openai#{i}": 100 for i in range(1, 5)}


def test_round_robin_is_fair_among_usable_keys() -> None:
    pool, _ = make_pool(4)
    pool.report_rate_limited(pool.keys()[1], retry_after=60)
    counts = Counter(take(pool).alias for _ in range(300))
    assert counts == {"openai#1": 100, "openai#3": 100, "openai#4": 100}


def test_least_busy_picks_fewest_inflight() -> None:
    pool, _ = make_pool(3, strategy="least_busy")
    a, b, c = pool.keys()
    assert [pool.acquire() for _ in range(3)] == [a, b, c]  # all idle: ties go round-robin
    assert [pool.acquire() for _ in range(2)] == [a, b]
    assert [a.inflight, b.inflight, c.inflight] == [2, 2, 1]
    assert pool.acquire() is c
    pool.release(b)
    assert pool.acquire() is b
    pool.release(a)
    pool.release(a)
    assert pool.acquire() is a


def test_least_busy_skips_unusable_keys() -> None:
    pool, _ = make_pool(3, strategy="least_busy")
    a, b, c = pool.keys()
    pool.report_retired(a, "invalid")
    pool.report_rate_limited(b, retry_after=10)
    assert [pool.acquire() for _ in range(3)] == [c, c, c]


def _told(limit: int, remaining: int, reset: str = "10s") -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(
        CIMultiDict(
            {
                "x-ratelimit-limit-requests": str(limit),
                "x-ratelimit-remaining-requests": str(remaining),
                "x-ratelimit-reset-requests": reset,
            }
        )
    )


def _answer(
    pool: KeyPool, key: UpstreamKey, limit: int, remaining: int, reset: str = "10s"
) -> None:
    pool.answered(key, _told(limit, remaining, reset))
    pool.release(key)


def test_least_headroom_picks_the_key_with_the_most_room_left() -> None:
    pool, clock = make_pool(3, strategy="least_headroom")
    a, b, c = pool.keys()
    assert [pool.acquire() for _ in range(3)] == [a, b, c]  # none seen: in turn
    _answer(pool, a, 100, 10)
    _answer(pool, b, 100, 50)
    _answer(pool, c, 10, 9)
    assert take(pool) is c  # 0.8 left after it, against 0.09 and 0.49
    clock.advance(9.0)  # a refills to 91 of 100, b to 95: the largest share left is b's
    assert take(pool) is b


def test_least_headroom_counts_unanswered_requests_against_a_key() -> None:
    pool, _ = make_pool(2, strategy="least_headroom")
    a, b = pool.keys()
    _answer(pool, pool.acquire(), 10, 10)
    _answer(pool, pool.acquire(), 20, 10)
    # 0.9, 0.8 ... 0.5 left after each, against b's 0.45: then b's turn.
    assert [pool.acquire() for _ in range(6)] == [a, a, a, a, a, b]
    pool.answered(a)  # an answer without headers leaves the limits as they were seen
    pool.release(a)
    assert (a.room.pending, a.inflight) == (4, 4)
    assert a.room.requests is not None and a.room.requests.remaining == 10


def test_least_headroom_passes_over_cooling_retired_and_barred_keys() -> None:
    pool, clock = make_pool(3, strategy="least_headroom")
    a, b, c = pool.keys()
    pool.report_retired(a, "invalid")
    pool.report_rate_limited(b, retry_after=5)
    pool.report_refused_model(c, "gpt-4o", 403)
    assert [take(pool) for _ in range(2)] == [c, c]
    with pytest.raises(UpstreamRateLimited):
        pool.acquire(model="gpt-4o")
    clock.advance(5.0)
    assert take(pool, ()) in (b, c)
    assert pool.acquire(model="gpt-4o") is b


def test_the_other_strategies_keep_no_limits() -> None:
    pool, _ = make_pool(1)
    key = pool.acquire()
    pool.answered(key, _told(10, 1))
    pool.release(key)
    assert key.room.requests is None and key.room.pending == 0


def test_random_only_picks_usable_keys() -> None:
    pool, _ = make_pool(5, strategy="random")
    keys = pool.keys()
    pool.report_retired(keys[0], "invalid")
    pool.report_retired(keys[3], "no_quota")
    pool.report_rate_limited(keys[4], retry_after=60)
    counts = Counter(take(pool).alias for _ in range(600))
    assert set(counts) == {"openai#2", "openai#3"}
    assert 240 < counts["openai#2"] < 360


def test_random_is_roughly_uniform() -> None:
    pool, _ = make_pool(3, strategy="random")
    counts = Counter(take(pool).alias for _ in range(3000))
    assert all(900 < c < 1100 for c in counts.values()), counts
