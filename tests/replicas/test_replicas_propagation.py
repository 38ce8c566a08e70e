"""A revocation, a policy change or an upstream cooldown on one replica reaches all through Redis.

The store's poll is 30 s here, so whatever arrives within the tests' deadlines (10 s) came
through Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest
from redis import Redis as SyncRedis
from redis.client import PubSub
from replica_harness import ADMIN, Replicas, chat

from chatgpt_proxy.upstream.pool import KeyPool, KeyState, UpstreamKey
from fake_openai import FAKE_KEYS, FakeOpenAI
from harness import Proxy
from servers import wait_for
from services import redis_url

# Well within the store's poll (30 s): a change seen sooner came through Redis.
PROPAGATION_S = 10.0


def _refused(client: openai.OpenAI) -> bool:
    try:
        chat(client)
    except openai.AuthenticationError:
        return True
    return False


def test_a_key_revoked_on_one_replica_stops_working_on_all_within_a_second(
    replicas: Replicas,
) -> None:
    key_id, secret = replicas.create_key()
    clients = replicas.clients(secret)
    for client in clients:
        chat(client)
    answer = replicas.proxies[1].http().delete(f"/admin/keys/{key_id}", headers=ADMIN)
    assert answer.status_code == 200
    # The store's poll is 30 s here: only Redis can carry the revocation this fast.
    for client in (clients[0], clients[2]):
        replicas.wait_until(lambda c=client: _refused(c), timeout=PROPAGATION_S)
    with pytest.raises(openai.AuthenticationError):
        chat(clients[1])


def test_a_policy_change_on_one_replica_applies_on_all(replicas: Replicas) -> None:
    key_id, secret = replicas.create_key(rpm=1)
    answer = (
        replicas.proxies[0].http().patch(f"/admin/keys/{key_id}", json={"rpm": 6}, headers=ADMIN)
    )
    assert answer.status_code == 200
    policy = lambda proxy: proxy.state.keys.authenticate(f"Bearer {secret}").policy  # noqa: E731
    replicas.wait_until(
        lambda: all(policy(p).rpm == 6 for p in replicas.proxies), timeout=PROPAGATION_S
    )
    assert sum(o.status == 200 for o in replicas.drive(secret, 9)) == 6


def _state(proxy: Proxy, alias: str) -> KeyState:
    [status] = [s for s in proxy.state.router.upstreams[0].pool.snapshot() if s.alias == alias]
    return status.state


def test_an_upstream_key_cooled_on_one_replica_is_skipped_by_all(
    replicas: Replicas, fake: FakeOpenAI, make_proxy: Callable[..., Proxy]
) -> None:
    first, second, third = replicas.proxies
    fake.script_key(FAKE_KEYS[0], "rate_limit", times=1, retry_after=30)
    chat(first.client())  # openai#1 answers 429: cooled, and the request retried on openai#2
    assert _state(first, "openai#1") is KeyState.COOLING
    for proxy in (second, third):
        replicas.wait_until(
            lambda p=proxy: _state(p, "openai#1") is KeyState.COOLING, timeout=PROPAGATION_S
        )
    before = len(fake.requests)
    for _ in range(4):
        chat(second.client())
        chat(third.client())
    assert set(fake.keys_used()[before:]) == {FAKE_KEYS[1]}
    # A replica that starts later learns it from the stored states.
    settings = first.state.settings
    late = make_proxy(
        database_url=settings.database_url,
        redis_url=settings.redis_url,
        limits={"redis_prefix": settings.limits.redis_prefix},
    )
    replicas.wait_until(lambda: _state(late, "openai#1") is KeyState.COOLING, timeout=PROPAGATION_S)
    assert _state(first, "openai#2") is KeyState.ACTIVE  # nothing echoed, nothing invented


def test_a_readmitted_upstream_key_comes_back_on_all(replicas: Replicas) -> None:
    first, second, _ = replicas.proxies
    pool = first.state.router.upstreams[0].pool
    key = pool.by_alias("openai#2")
    assert key is not None
    first.loop.run(_call(lambda: pool.report_retired(key, "invalid")))
    replicas.wait_until(
        lambda: _state(second, "openai#2") is KeyState.RETIRED, timeout=PROPAGATION_S
    )
    first.loop.run(_call(lambda: pool.readmit(key)))
    replicas.wait_until(
        lambda: _state(second, "openai#2") is KeyState.ACTIVE, timeout=PROPAGATION_S
    )


async def _call(function: Callable[[], None]) -> None:
    function()  # on the proxies' loop, as the upstream client would


def test_a_cooldown_is_published_once_and_never_echoed(
    replicas: Replicas, fake: FakeOpenAI, redis_prefix: str
) -> None:
    listener = SyncRedis.from_url(redis_url()).pubsub(ignore_subscribe_messages=True)
    listener.subscribe(redis_prefix + "upstreams")
    listener.get_message(timeout=1.0)  # the subscription's confirmation
    fake.script_key(FAKE_KEYS[0], "rate_limit", times=1, retry_after=30)
    chat(replicas.proxies[0].client())
    for proxy in replicas.proxies[1:]:
        replicas.wait_until(lambda p=proxy: _state(p, "openai#1") is KeyState.COOLING)
    # An echo is an absence, with no event of its own to wait for. So each replica in turn
    # makes a change of its own and the test reads up to its publication: a replica's watcher
    # publishes what it sees in one pass, so an echo from that replica comes no later.
    messages = _read_until(listener, "openai#1", "cooling")
    first, second, third = replicas.proxies
    for proxy, change, state in (
        (second, _retire, KeyState.RETIRED),
        (third, _readmit, KeyState.ACTIVE),
        (first, _retire, KeyState.RETIRED),
    ):
        pool = proxy.state.router.upstreams[0].pool
        key = pool.by_alias("openai#2")
        assert key is not None
        proxy.loop.run(_call(lambda p=pool, k=key, c=change: c(p, k)))
        messages += _read_until(listener, "openai#2", str(state))
        # Every replica holds it before the next one changes it again.
        replicas.wait_until(
            lambda s=state: all(_state(p, "openai#2") is s for p in replicas.proxies),
            timeout=PROPAGATION_S,
        )
    while (message := listener.get_message(timeout=0.2)) is not None:
        messages.append(orjson.loads(message["data"]))
    listener.close()
    assert [(m["alias"], m["state"]) for m in messages] == [
        ("openai#1", "cooling"),
        ("openai#2", "retired"),
        ("openai#2", "active"),
        ("openai#2", "retired"),
    ]


def _retire(pool: KeyPool, key: UpstreamKey) -> None:
    pool.report_retired(key, "invalid")


def _readmit(pool: KeyPool, key: UpstreamKey) -> None:
    pool.readmit(key)


def _read_until(listener: PubSub, alias: str, state: str) -> list[dict[str, Any]]:
    """The upstream states published, up to and including ``alias`` going to ``state``."""
    messages: list[dict[str, Any]] = []

    def arrived() -> bool:
        message = listener.get_message(timeout=0.05)
        if message is not None:
            messages.append(orjson.loads(message["data"]))
        return bool(messages) and (messages[-1]["alias"], messages[-1]["state"]) == (alias, state)

    try:
        wait_for(arrived, PROPAGATION_S)
    except AssertionError:
        # An echo may stand in for it: a replica that echoes has also already "seen" the change.
        pytest.fail(f"{alias} going {state} was never published; published instead: {messages}")
    return messages
