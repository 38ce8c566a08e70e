"""Script calls batched into pipelines: answered in order, scripts Redis forgot loaded again,
sends drained, orphans reported, and an unreachable Redis a ``RedisUnavailable``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from limits_rig import Rig
from redis.asyncio import Redis

from chatgpt_proxy.limits.autopipe import AutoPipeline
from chatgpt_proxy.redis_link import RedisLink, RedisUnavailable
from servers import free_port, wait_for_async

ECHO = "return ARGV[1]"
INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def test_calls_arriving_together_are_each_answered_with_their_own_result(redis_rig: Rig) -> None:
    assert redis_rig.link is not None
    pipe = AutoPipeline(redis_rig.link)

    async def burst() -> list[Any]:
        try:
            return await asyncio.gather(
                *(
                    pipe.call(redis_rig.link.client.register_script(ECHO), (), (str(n),))
                    for n in range(600)
                )
            )
        finally:
            await pipe.close()

    assert redis_rig.loop.run(burst()) == [str(n).encode() for n in range(600)]


def test_a_script_redis_forgot_is_loaded_again(redis_rig: Rig) -> None:
    assert redis_rig.link is not None
    counter = redis_rig.link.prefix + "counter"
    pipe = AutoPipeline(redis_rig.link)

    async def twice() -> list[Any]:
        first = await pipe.call(redis_rig.link.client.register_script(INCR), (counter,), (2,))
        await redis_rig.link.client.script_flush()  # as after a Redis restart
        second = await pipe.call(redis_rig.link.client.register_script(INCR), (counter,), (3,))
        await pipe.close()
        return [first, second]

    assert redis_rig.loop.run(twice()) == [2, 5]


def test_sends_are_all_made_once_drained(redis_rig: Rig) -> None:
    assert redis_rig.link is not None
    counter = redis_rig.link.prefix + "sent"
    pipe = AutoPipeline(redis_rig.link)

    async def fire_and_forget() -> None:
        for _ in range(100):
            pipe.send(redis_rig.link.client.register_script(INCR), (counter,), (1,))
        await pipe.drain()
        await pipe.close()

    redis_rig.loop.run(fire_and_forget())
    assert redis_rig.redis("GET", counter) == b"100"


def test_the_result_of_a_call_whose_caller_left_goes_to_on_orphan(redis_rig: Rig) -> None:
    assert redis_rig.link is not None
    counter = redis_rig.link.prefix + "orphan"
    pipe = AutoPipeline(redis_rig.link)
    orphans: list[Any] = []

    async def leave() -> None:
        task = asyncio.create_task(
            pipe.call(
                redis_rig.link.client.register_script(INCR),
                (counter,),
                (7,),
                on_orphan=orphans.append,
            )
        )
        await asyncio.sleep(0)  # queued: on its way with the next pipeline
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for_async(lambda: orphans, message="the orphaned result never came")
        await pipe.close()

    redis_rig.loop.run(leave())
    assert orphans == [7]


def test_an_unreachable_redis_fails_the_callers_and_marks_the_link_down() -> None:
    async def unreachable() -> bool:
        link = RedisLink(Redis.from_url(f"redis://127.0.0.1:{free_port()}"), recheck_seconds=60)
        pipe = AutoPipeline(link)
        try:
            with pytest.raises(RedisUnavailable):
                await pipe.call(link.client.register_script(ECHO), (), ("x",))
            return link.up
        finally:
            await pipe.close()
            await link.close()

    assert asyncio.run(unreachable()) is False
