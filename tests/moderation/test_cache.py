"""The verdict cache: keys, the bounded LRU with TTL, and the shared Redis variant."""

from __future__ import annotations

import asyncio
import logging
import secrets

import pytest
from redis.asyncio import Redis

from chatgpt_proxy.moderation import ItemResult, MemoryVerdictCache, RedisVerdictCache, cache_key
from services import redis_url

MODEL = "omni-moderation-latest"
CLEAN = ItemResult.of((), {"hate": 0.01, "violence": 0.02})
FLAGGED = ItemResult.of({"violence"}, {"hate": 0.01, "violence": 0.93})


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_key_is_canonical_and_per_model() -> None:
    a = {"type": "image_url", "image_url": {"url": "u"}}
    b = {"image_url": {"url": "u"}, "type": "image_url"}
    assert cache_key(a, MODEL) == cache_key(b, MODEL)
    assert cache_key("text", MODEL) != cache_key("text", "text-moderation-latest")
    assert cache_key("text", MODEL) != cache_key("text ", MODEL)
    assert len(cache_key("text", MODEL)) == 64


def test_item_result_round_trip_and_garbage() -> None:
    assert ItemResult.decode(FLAGGED.encode()) == FLAGGED
    assert ItemResult.decode(b"not json") is None
    assert ItemResult.decode(b'{"f": 1}') is None


def test_memory_cache_is_a_bounded_lru() -> None:
    cache = MemoryVerdictCache(size=2, ttl=60.0, clock=FakeClock())
    cache.set("a", CLEAN)
    cache.set("b", FLAGGED)
    assert cache.get("a") == CLEAN  # "a" is now the most recently used
    cache.set("c", CLEAN)
    assert len(cache) == 2
    assert cache.get("b") is None
    assert cache.get("a") == CLEAN
    assert cache.get("c") == CLEAN


def test_memory_cache_expires_entries_after_ttl() -> None:
    clock = FakeClock()
    cache = MemoryVerdictCache(size=10, ttl=60.0, clock=clock)
    cache.set("a", CLEAN)
    clock.now += 59.9
    assert cache.get("a") == CLEAN
    clock.now += 0.1
    assert cache.get("a") is None
    assert len(cache) == 0


def test_memory_cache_of_size_zero_keeps_nothing() -> None:
    cache = MemoryVerdictCache(size=0, ttl=60.0)
    cache.set("a", CLEAN)
    assert cache.get("a") is None


def test_memory_cache_async_interface() -> None:
    cache = MemoryVerdictCache(size=10, ttl=60.0)

    async def scenario() -> list[ItemResult | None]:
        await cache.set_many({"a": CLEAN, "b": FLAGGED})
        return await cache.get_many(["b", "x", "a"])

    assert asyncio.run(scenario()) == [FLAGGED, None, CLEAN]


# ---------------------------------------------------------------- Redis


def test_redis_cache_is_shared_between_replicas() -> None:
    url = redis_url()
    prefix = f"cgp:test:{secrets.token_hex(6)}:"

    async def scenario() -> None:
        redis = Redis.from_url(url)
        try:
            one = RedisVerdictCache(redis, memory=MemoryVerdictCache(10, 120.0), prefix=prefix)
            two = RedisVerdictCache(redis, memory=MemoryVerdictCache(10, 120.0), prefix=prefix)
            await one.set_many({"a": CLEAN, "b": FLAGGED})
            assert await two.get_many(["a", "b", "c"]) == [CLEAN, FLAGGED, None]
            assert 110 <= await redis.ttl(prefix + "a") <= 120
            await redis.set(prefix + "junk", b"not a result")
            assert await two.get_many(["junk"]) == [None]
        finally:
            keys = await redis.keys(prefix + "*")
            if keys:
                await redis.delete(*keys)
            await redis.aclose()

    asyncio.run(scenario())


def test_redis_cache_falls_back_to_memory_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        # Nothing listens on port 1: every Redis call fails at once.
        redis = Redis.from_url("redis://127.0.0.1:1", socket_connect_timeout=0.5)
        cache = RedisVerdictCache(
            redis,
            memory=MemoryVerdictCache(10, 60.0),
            prefix="cgp:mod:",
            clock=clock,
        )
        try:
            await cache.set_many({"a": CLEAN})
            assert await cache.get_many(["a", "b"]) == [CLEAN, None]
            clock.now += 31.0  # Redis is tried again, fails again: still no second warning
            assert await cache.get_many(["b"]) == [None]
        finally:
            await cache.close()
            await redis.aclose()

    with caplog.at_level(logging.WARNING, logger="chatgpt_proxy.moderation"):
        asyncio.run(scenario())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Redis failed" in warnings[0].getMessage()


def test_an_item_result_keeps_its_scores_and_refuses_a_name_it_cannot_keep() -> None:
    assert FLAGGED.scores == {"hate": 0.01, "violence": 0.93}
    assert FLAGGED.flagged == {"violence"} and not CLEAN.flagged
    assert ItemResult.of((), {}).scores == {}
    assert CLEAN.names is ItemResult.of((), {"hate": 0.5, "violence": 0.5}).names  # one copy
    with pytest.raises(ValueError, match="line break"):
        ItemResult.of((), {"a\nb": 0.1})
    assert ItemResult.decode(b'{"f": [], "s": {"a\\nb": 0.1}}') is None


def test_memory_cache_is_bounded_in_bytes_and_drops_the_oldest_first() -> None:
    cache = MemoryVerdictCache(size=100_000, ttl=60.0, max_bytes=50_000)
    keys = [cache_key(f"prompt {n}", MODEL) for n in range(1_000)]
    for key in keys:
        cache.set(key, FLAGGED)
        assert cache.bytes <= 50_000
    assert 50 < len(cache) < 200  # ~400 bytes an entry
    held = len(cache)
    assert all(cache.get(key) is None for key in keys[:-held])
    assert all(cache.get(key) == FLAGGED for key in keys[-held:])
    nothing = MemoryVerdictCache(size=10, ttl=60.0, max_bytes=0)
    nothing.set(keys[0], CLEAN)
    assert nothing.get(keys[0]) is None and nothing.bytes == 0
