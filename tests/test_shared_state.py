"""Shared state between replicas on one Redis: upstream key states published once and applied
everywhere, client key changes re-read at once, junk on the channels ignored."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from chatgpt_proxy.auth import KeyCache
from chatgpt_proxy.errors import AuthenticationFailed
from chatgpt_proxy.keystore import KeyPolicy, KeyStore
from chatgpt_proxy.redis_link import RedisLink
from chatgpt_proxy.settings import PoolSettings, Settings, UpstreamSettings
from chatgpt_proxy.shared_state import SharedState, announce_key_change
from chatgpt_proxy.upstream.pool import KeyState
from chatgpt_proxy.upstream.router import Router
from servers import wait_for_async
from services import redis_url

UPSTREAM = UpstreamSettings.model_validate({"name": "openai", "keys": ["sk-a", "sk-b"]})


class Replica:
    def __init__(self, link: RedisLink, store: KeyStore) -> None:
        self.link = link
        self.store = store
        self.router = Router.from_settings([UPSTREAM], PoolSettings())
        self.keys = KeyCache(store, refresh_seconds=3600)  # no poll: only messages bring keys
        self.shared = SharedState(link, self.router, self.keys, tick=0.01)
        self.pool = self.router.upstreams[0].pool

    def state(self, alias: str) -> KeyState:
        return next(s.state for s in self.pool.snapshot() if s.alias == alias)


async def _listeners(prefix: str) -> int:
    """How many replicas listen on the upstream channel under ``prefix``."""
    client = Redis.from_url(redis_url())
    try:
        channel = prefix + "upstreams"
        counts = dict(await client.pubsub_numsub(channel))
        return int(counts.get(channel.encode(), 0))
    finally:
        await client.aclose()


@asynccontextmanager
async def replicas(database_url: str, prefix: str, count: int = 2) -> AsyncIterator[list[Replica]]:
    """``count`` replicas sharing one store, each listening before this yields (a message
    published earlier would reach none of them: Redis keeps no channel history)."""
    listening = await _listeners(prefix)
    async with AsyncExitStack() as stack:
        store = await KeyStore.open(database_url)
        stack.push_async_callback(store.close)
        await store.migrate()
        made = []
        for _ in range(count):
            link = RedisLink(Redis.from_url(redis_url()), prefix=prefix)
            stack.push_async_callback(link.close)
            replica = Replica(link, store)
            await replica.keys.start()
            stack.push_async_callback(replica.keys.stop)
            await replica.shared.start()
            stack.push_async_callback(replica.shared.stop)
            made.append(replica)
        expected = listening + count
        await wait_for_async(lambda: _ready(prefix, expected), message="replicas not listening")
        yield made


async def _ready(prefix: str, expected: int) -> bool:
    return await _listeners(prefix) >= expected


Scenario = Callable[[list[Replica], str], Awaitable[None]]


@pytest.fixture
def run(tmp_path: Path) -> Callable[[Scenario], None]:
    def run_scenario(scenario: Scenario) -> None:
        prefix = f"cgp-test:{secrets.token_hex(4)}:"

        async def main() -> None:
            try:
                async with replicas(f"sqlite:///{tmp_path / 'keys.db'}", prefix) as made:
                    await scenario(made, prefix)
            finally:
                client = Redis.from_url(redis_url())
                names = [name async for name in client.scan_iter(match=prefix + "*")]
                if names:
                    await client.delete(*names)
                await client.aclose()

        asyncio.run(main())

    return run_scenario


def test_a_retired_key_is_retired_on_every_replica_and_comes_back_on_all(
    run: Callable[[Scenario], None],
) -> None:
    async def scenario(made: list[Replica], prefix: str) -> None:
        first, second = made
        key = first.pool.by_alias("openai#1")
        assert key is not None
        first.pool.report_retired(key, "invalid")
        await wait_for_async(lambda: second.state("openai#1") is KeyState.RETIRED)
        first.pool.readmit(key)
        await wait_for_async(lambda: second.state("openai#1") is KeyState.ACTIVE)
        assert second.state("openai#2") is KeyState.ACTIVE

    run(scenario)


def test_a_replica_starting_later_reads_the_states_already_shared(
    run: Callable[[Scenario], None], tmp_path: Path
) -> None:
    async def scenario(made: list[Replica], prefix: str) -> None:
        first = made[0]
        key = first.pool.by_alias("openai#2")
        assert key is not None
        first.pool.report_retired(key, "invalid")
        client = Redis.from_url(redis_url())
        try:
            await wait_for_async(lambda: client.hexists(prefix + "upstream-states", "openai#2"))
        finally:
            await client.aclose()
        async with replicas(f"sqlite:///{tmp_path / 'late.db'}", prefix, count=1) as (late,):
            await wait_for_async(lambda: late.state("openai#2") is KeyState.RETIRED)

    run(scenario)


def test_a_changed_client_key_is_reread_by_the_other_replicas(
    run: Callable[[Scenario], None],
) -> None:
    async def scenario(made: list[Replica], prefix: str) -> None:
        first, second = made
        key, secret = await first.store.create("made elsewhere", KeyPolicy())
        with pytest.raises(AuthenticationFailed):
            second.keys.authenticate(f"Bearer {secret}")
        await first.shared.key_changed(key.id)

        def known() -> bool:
            try:
                second.keys.authenticate(f"Bearer {secret}")
            except AuthenticationFailed:
                return False
            return True

        await wait_for_async(known, message="the other replica never re-read the key")

    run(scenario)


async def _publish_then_retire(prefix: str, junk: list[bytes]) -> None:
    """Publish ``junk`` on the upstream channel, then a real change from another replica."""
    client = Redis.from_url(redis_url())
    try:
        channel = prefix + "upstreams"
        for message in junk:
            await client.publish(channel, message)
        change = {"replica": "elsewhere", "alias": "openai#1", "state": "retired"}
        await client.publish(channel, orjson.dumps({**change, "reason": "invalid"}))
    finally:
        await client.aclose()


def test_junk_on_the_channels_is_ignored(run: Callable[[Scenario], None]) -> None:
    async def scenario(made: list[Replica], prefix: str) -> None:
        junk = [b"not json", orjson.dumps({"alias": "openai#1"}), orjson.dumps({"state": 1})]
        await _publish_then_retire(prefix, junk)
        for replica in made:  # each still listening: the change after the junk arrives
            await wait_for_async(lambda r=replica: r.state("openai#1") is KeyState.RETIRED)

    run(scenario)


def test_json_that_is_not_an_object_is_ignored_too(run: Callable[[Scenario], None]) -> None:
    async def scenario(made: list[Replica], prefix: str) -> None:
        await _publish_then_retire(prefix, [b"[]", b"3", b'"x"', b"null"])
        for replica in made:
            await wait_for_async(
                lambda r=replica: r.state("openai#1") is KeyState.RETIRED, timeout=1.0
            )

    run(scenario)


# Past its start-up (a few dozen turns of the loop on a warm connection), a stop finds the
# listener reading; every earlier turn is where a stop could be lost.
_START_UP_TURNS = 80


def test_stopped_at_any_point_of_its_start_the_listener_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """redis-py writes each command under ``asyncio.wait_for``, which before Python 3.12 loses a
    cancellation that arrives as the write completes: stopped then, the listener went on into a
    read with no end and ``stop()`` never returned (a replica hanging on SIGTERM)."""
    prefix = f"cgp-test:{secrets.token_hex(4)}:"
    settings = Settings.model_validate(
        {
            "upstreams": [{"name": "openai", "keys": ["sk-a"]}],
            "redis_url": redis_url(),
            "limits": {"redis_prefix": prefix},
        }
    )

    async def main() -> None:
        store = await KeyStore.open(f"sqlite:///{tmp_path / 'keys.db'}")
        link = RedisLink.open(settings)  # the app's client: its socket timeout is what matters
        try:
            await store.migrate()
            keys = KeyCache(store, refresh_seconds=3600)
            for turns in range(_START_UP_TURNS):
                shared = SharedState(link, Router.from_settings([UPSTREAM], PoolSettings()), keys)
                await shared.start()
                for _ in range(turns):
                    await asyncio.sleep(0)
                stopping = asyncio.create_task(shared.stop())
                done, _ = await asyncio.wait({stopping}, timeout=10)
                assert done, f"stop() hangs when called {turns} turns into the start"
                await wait_for_async(
                    lambda: _no_listener(prefix), message=f"still listening ({turns} turns)"
                )
        finally:
            await link.close()
            await store.close()

    asyncio.run(main())
    assert "did not stop" not in caplog.text  # each ended by itself, not by the backstop


async def _no_listener(prefix: str) -> bool:
    return await _listeners(prefix) == 0


def test_announcing_a_key_change_needs_redis() -> None:
    without = Settings.model_validate({"upstreams": [{"name": "openai", "keys": ["sk-x"]}]})
    assert asyncio.run(announce_key_change(without, "key_1")) is False
    with_redis = without.model_copy(update={"redis_url": redis_url()})
    assert asyncio.run(announce_key_change(with_redis, "key_1")) is True
