"""The fallback limiter: Redis's shared counts while the link is up, this process's own while it
is down, and Redis's again once a ping finds it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from limits_rig import Rig
from redis.asyncio import Redis

from chatgpt_proxy.errors import RateLimited
from chatgpt_proxy.keystore import ClientKey
from chatgpt_proxy.limits.fallback import FallbackLimiter
from chatgpt_proxy.limits.memory import MemoryLimiter
from chatgpt_proxy.limits.redis import RedisLimiter
from chatgpt_proxy.redis_link import RedisLink, RedisUnavailable
from servers import wait_for
from services import redis_url


class Process:
    """One process's limiter stack (its own link, the rig's Redis prefix and store)."""

    def __init__(self, rig: Rig, recheck_seconds: float) -> None:
        assert rig.link is not None
        self.rig = rig
        client = Redis.from_url(redis_url())
        self.link = RedisLink(client, prefix=rig.link.prefix, recheck_seconds=recheck_seconds)
        self.limiter = FallbackLimiter(
            RedisLimiter(self.link, rig.store, rig.pricing),
            MemoryLimiter(rig.store, rig.pricing),
            self.link,
        )

    def admitted(self, key: ClientKey) -> bool:
        try:
            self.rig.loop.run(self.limiter.admit(key, 1))
        except RateLimited:
            return False
        return True

    def lose_redis(self) -> None:
        async def fail() -> None:
            self.link.failed(RedisUnavailable("Redis is unavailable (test)"))

        self.rig.loop.run(fail())

    def close(self) -> None:
        self.rig.loop.run(self.limiter.close())
        self.rig.loop.run(self.link.close())


@pytest.fixture
def processes(redis_rig: Rig) -> Iterator[list[Process]]:
    made = [Process(redis_rig, recheck_seconds=60), Process(redis_rig, recheck_seconds=60)]
    yield made
    for process in made:
        process.close()


def test_while_redis_answers_every_process_counts_in_redis(
    redis_rig: Rig, processes: list[Process]
) -> None:
    first, second = processes
    key = redis_rig.key(rpm=2)
    assert first.admitted(key)
    assert second.admitted(key)
    assert not first.admitted(key)
    assert not second.admitted(key)


def test_while_redis_is_away_a_process_counts_on_its_own(
    redis_rig: Rig, processes: list[Process]
) -> None:
    first, second = processes
    key = redis_rig.key(rpm=2)
    first.lose_redis()
    assert [first.admitted(key) for _ in range(3)] == [True, True, False]
    # None of those reached Redis: the processes still sharing it have the whole minute.
    assert [second.admitted(key) for _ in range(3)] == [True, True, False]


def test_once_a_ping_finds_redis_the_counts_are_shared_again(redis_rig: Rig) -> None:
    process = Process(redis_rig, recheck_seconds=0.01)
    other = Process(redis_rig, recheck_seconds=60)
    try:
        key = redis_rig.key(rpm=2)
        process.lose_redis()
        assert not process.link.up
        wait_for(lambda: process.link.up, message="the link's ping never found Redis again")
        assert process.admitted(key)
        assert other.admitted(key)
        assert not other.admitted(key)  # the first process's admission was counted in Redis
    finally:
        process.close()
        other.close()
