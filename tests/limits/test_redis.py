"""The Redis limiter's own concerns: shared counts, forgotten scripts, lost counters, leases."""

from __future__ import annotations

import asyncio
import logging

import pytest
from limits_rig import Rig
from redis.asyncio import Redis

from chatgpt_proxy.errors import ProxyError
from chatgpt_proxy.limits.autopipe import AutoPipeline
from chatgpt_proxy.limits.fallback import FallbackLimiter
from chatgpt_proxy.limits.memory import MemoryLimiter
from chatgpt_proxy.limits.redis import RedisLimiter
from chatgpt_proxy.redis_link import RedisLink
from servers import free_port, wait_for
from services import redis_url


def _second_limiter(rig: Rig) -> RedisLimiter:
    """Another process's limiter: its own client, the same Redis and prefix."""
    assert rig.link is not None
    link = RedisLink(Redis.from_url(redis_url()), prefix=rig.link.prefix)
    return RedisLimiter(link, rig.store, rig.pricing)


def test_two_limiters_on_one_redis_share_every_count(redis_rig: Rig) -> None:
    rig = redis_rig
    other = _second_limiter(rig)
    key = rig.key(rpm=3, max_concurrency=10)
    rig.admit(key, 1)
    rig.admit(key, 1)
    rig.loop.run(other.admit(key, 1))
    assert rig.refused(key, 1).code == "rate_limit_exceeded"
    with pytest.raises(Exception, match="RPM"):
        rig.loop.run(other.admit(key, 1))
    rig.loop.run(other.close())


def test_forgotten_scripts_are_loaded_again(redis_rig: Rig) -> None:
    rig = redis_rig
    key = rig.key(max_concurrency=1)
    admission = rig.admit(key, 1)
    rig.redis("SCRIPT", "FLUSH")  # as after a Redis restart
    rig.finish(admission, 1)  # the settle script is loaded again, and the slot freed
    rig.redis("SCRIPT", "FLUSH")
    rig.finish(rig.admit(key, 1), 1)


def test_lost_budget_counters_are_seeded_again_from_the_store(redis_rig: Rig) -> None:
    rig = redis_rig
    assert rig.link is not None
    key = rig.key(total_token_budget=100)
    rig.finish(rig.admit(key, 10), 10)
    rig.record(key, 95)
    for name in rig.redis("KEYS", rig.link.prefix + "*:b:*"):
        rig.redis("DEL", name)  # lost, as in a Redis restart without persistence
    rig.finish(rig.admit(key, 1), 10)  # seeded from the store's 95: some is left, then 105
    assert rig.refused(key, 1).code == "insufficient_quota"


def test_a_slot_held_by_a_process_that_died_is_freed_by_its_lease(redis_rig: Rig) -> None:
    rig = redis_rig
    assert rig.link is not None
    short = RedisLimiter(rig.link, rig.store, rig.pricing, lease_seconds=0.3)
    key = rig.key(max_concurrency=1)
    rig.loop.run(short.admit(key, 1))  # never released: its process "died"
    with pytest.raises(Exception, match="in flight"):
        rig.loop.run(short.admit(key, 1))

    def admitted() -> bool:
        try:
            rig.loop.run(short.admit(key, 1))
        except ProxyError as exc:
            assert "in flight" in exc.message
            return False
        return True

    wait_for(admitted, message="the dead process's slot was never freed by its lease")


def test_release_without_settle_keeps_the_reservation(redis_rig: Rig) -> None:
    rig = redis_rig
    key = rig.key(tpm=100)
    admission = rig.admit(key, 70)

    async def release() -> None:
        await admission.release()
        assert isinstance(rig.limiter, RedisLimiter)
        await rig.limiter.flush()

    rig.loop.run(release())
    assert rig.refused(key, 40).code == "rate_limit_exceeded"


def test_without_redis_the_local_limits_apply_and_it_is_logged_once(
    redis_rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig = redis_rig
    dead = RedisLink(Redis.from_url(f"redis://127.0.0.1:{free_port()}"), recheck_seconds=60)
    limiter = FallbackLimiter(
        RedisLimiter(dead, rig.store), MemoryLimiter(rig.store, rig.pricing), dead
    )
    key = rig.key(rpm=2)
    with caplog.at_level(logging.INFO, logger="chatgpt_proxy.redis"):
        for _ in range(2):
            rig.loop.run(limiter.admit(key, 1))
        with pytest.raises(Exception, match="RPM"):
            rig.loop.run(limiter.admit(key, 1))
    assert not dead.up
    warnings = [r for r in caplog.records if r.name == "chatgpt_proxy.redis"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    rig.loop.run(limiter.close())
    rig.loop.run(dead.close())


def test_an_admission_whose_request_went_away_is_undone(redis_rig: Rig) -> None:
    rig = redis_rig
    key = rig.key(max_concurrency=1, tpm=100)
    assert isinstance(rig.limiter, RedisLimiter)
    limiter = rig.limiter

    async def cancelled_while_admitted() -> None:
        task = asyncio.create_task(limiter.admit(key, 90))
        await asyncio.sleep(0)  # queued: on its way to Redis with the next pipeline
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await limiter.flush()  # the admission ran in Redis; its undoing follows it

    rig.loop.run(cancelled_while_admitted())
    rig.loop.run(limiter.flush())
    rig.finish(rig.admit(key, 90), 90)  # the slot and the 90 tokens were given back


def test_sends_of_a_merging_script_on_one_key_go_as_one_call(redis_rig: Rig) -> None:
    rig = redis_rig
    assert rig.link is not None
    tally = rig.link.prefix + "tally"
    merging = rig.link.client.register_script("redis.call('RPUSH', KEYS[1], #ARGV) return 1")
    alone = rig.link.client.register_script("redis.call('RPUSH', KEYS[1], 'x' .. #ARGV) return 1")
    pipe = AutoPipeline(rig.link)

    async def burst() -> object:
        for n in range(5):
            pipe.send(merging, (tally,), (f"record {n}",), merge=True)
        pipe.send(alone, (tally,), ("a",))
        pipe.send(alone, (tally,), ("b",))
        answer = await pipe.call(merging, (tally,), ("awaited",))
        await pipe.close()
        return answer

    assert rig.loop.run(burst()) == 1
    # One pipeline: the five sends as one call; an awaited call and a script that does not
    # merge, one call each.
    assert rig.redis("LRANGE", tally, 0, -1) == [b"5", b"x1", b"x1", b"1"]
