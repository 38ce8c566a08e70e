"""The key store against real databases: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from chatgpt_proxy.errors import InvalidRequest, StoreUnavailable
from chatgpt_proxy.keystore import (
    KeyPolicy,
    KeyStore,
    async_database_url,
    hash_secret,
)
from servers import wait_for_async
from stores import migrated, usage_event

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def raw_key_rows(database_url: str) -> list[dict[str, Any]]:
    """client_keys as the database holds it, bypassing the store's types."""
    engine = create_async_engine(async_database_url(database_url))
    try:
        async with engine.connect() as conn:
            result = await conn.execute(sa.text("SELECT * FROM client_keys"))
            return [dict(row._mapping) for row in result]
    finally:
        await engine.dispose()


def test_create_get_list_count(database_url: str) -> None:
    async def scenario() -> None:
        async with migrated(database_url) as store:
            assert await store.count() == 0
            assert await store.list() == []
            policy = KeyPolicy(rpm=60, daily_cost_budget=2.5, models=("gpt-4o*",))
            first, secret = await store.create("ci", policy)
            second, _ = await store.create("  staging  ", KeyPolicy())
            assert first.id.startswith("key_") and len(first.id) == 20
            assert first.prefix == secret[:10]
            assert first.key_hash == hash_secret(secret)
            assert first.policy == policy
            assert second.name == "staging"
            assert await store.get(first.id) == first
            assert await store.get("key_missing") is None
            assert await store.list() == [first, second]
            assert await store.count() == 2
            await store.ping()

    run(scenario())


def test_only_the_hash_is_stored(database_url: str) -> None:
    async def scenario() -> str:
        async with migrated(database_url) as store:
            _, secret = await store.create("ci", KeyPolicy(models=("gpt-4o",)))
        return secret

    secret = run(scenario())
    (row,) = run(raw_key_rows(database_url))
    assert row["key_hash"] == hash_secret(secret)
    for column, value in row.items():
        assert secret not in str(value), column
        assert secret[3:] not in str(value), column  # nor the secret without its "pk-"


def test_keys_are_unique(database_url: str) -> None:
    async def scenario() -> None:
        async with migrated(database_url) as store:
            created = [await store.create(f"k{i}", KeyPolicy()) for i in range(40)]
        assert len({key.id for key, _ in created}) == 40
        assert len({key.key_hash for key, _ in created}) == 40
        assert len({secret for _, secret in created}) == 40
        assert all(len(secret) >= 3 + 22 for _, secret in created)  # >= 128 bits of base64

    run(scenario())


def test_revoke(database_url: str) -> None:
    async def scenario() -> None:
        async with migrated(database_url) as store:
            key, _ = await store.create("ci", KeyPolicy())
            revoked = await store.revoke(key.id)
            assert revoked is not None and revoked.revoked_at is not None
            assert revoked.updated_at >= key.updated_at
            assert revoked.state(datetime.now(UTC)) == "revoked"
            assert revoked.public_dict()["state"] == "revoked"
            again = await store.revoke(key.id)
            assert again is not None and again.revoked_at == revoked.revoked_at  # idempotent
            assert await store.get(key.id) == again
            assert await store.revoke("key_missing") is None
            assert await store.count() == 1  # revoked keys stay listed

    run(scenario())


def test_update(database_url: str) -> None:
    async def scenario() -> None:
        async with migrated(database_url) as store:
            expiry = datetime.now(UTC) + timedelta(days=30)
            key, _ = await store.create("ci", KeyPolicy(rpm=1), expires_at=expiry)
            renamed = await store.update(key.id, name="ci-2")
            assert renamed is not None
            assert renamed.name == "ci-2"
            assert renamed.policy == key.policy and renamed.expires_at == expiry  # untouched
            new_policy = KeyPolicy(tpm=500, total_token_budget=10**12, moderation="exempt")
            repoliced = await store.update(key.id, policy=new_policy, expires_at=None)
            assert repoliced is not None
            assert repoliced.policy == new_policy
            assert repoliced.expires_at is None
            assert repoliced.updated_at >= renamed.updated_at
            assert await store.get(key.id) == repoliced
            assert await store.update("key_missing", name="x") is None
            with pytest.raises(InvalidRequest):
                await store.update(key.id, name=" ")
            with pytest.raises(InvalidRequest):
                await store.create("x" * 201, KeyPolicy())

    run(scenario())


async def _clock_passes(moment: datetime) -> None:
    """Wait until the wall clock is past ``moment``, so the next write is stamped after it."""
    await wait_for_async(lambda: datetime.now(UTC) > moment)


def test_changed_since(database_url: str) -> None:
    async def scenario() -> None:
        async with migrated(database_url) as store:
            old, _ = await store.create("old", KeyPolicy())
            await _clock_passes(old.updated_at)
            mark = datetime.now(UTC)
            new, _ = await store.create("new", KeyPolicy())
            assert [k.id for k in await store.changed_since(None)] == [old.id, new.id]
            assert [k.id for k in await store.changed_since(mark)] == [new.id]
            assert [k.id for k in await store.changed_since(new.updated_at)] == [new.id]
            await _clock_passes(new.updated_at)
            revoked = await store.revoke(old.id)
            assert revoked is not None
            changed = await store.changed_since(mark)
            assert [k.id for k in changed] == [new.id, old.id]  # ordered by updated_at
            assert changed[1].revoked_at is not None  # revocations reach the auth cache
            later = revoked.updated_at + timedelta(microseconds=1)
            assert await store.changed_since(later) == []

    run(scenario())


def test_datetimes_are_aware_utc_and_round_trip(database_url: str) -> None:
    async def scenario() -> None:
        async with migrated(database_url) as store:
            plus_five = timezone(timedelta(hours=5))
            expiry = datetime(2031, 1, 2, 3, 4, 5, 678901, tzinfo=plus_five)
            key, _ = await store.create("ci", KeyPolicy(), expires_at=expiry)
            stored = await store.get(key.id)
            assert stored is not None and stored.expires_at is not None
            assert stored.expires_at == expiry
            assert stored.expires_at.utcoffset() == timedelta(0)
            assert stored.expires_at.hour == 22  # 03:04 at +05:00 is 22:04 UTC the day before
            assert stored.created_at.tzinfo is not None
            assert stored.created_at == key.created_at
            with pytest.raises(ValueError, match="timezone-aware"):
                await store.create("naive", KeyPolicy(), expires_at=datetime(2031, 1, 1))
            with pytest.raises(ValueError, match="timezone-aware"):
                await store.changed_since(datetime(2031, 1, 1))

    run(scenario())


def test_sql_injection_looking_input_is_literal(database_url: str) -> None:
    names = ["x'); DROP TABLE client_keys; --", "' OR '1'='1", 'Robert"; DELETE FROM usage_events']

    async def scenario() -> None:
        async with migrated(database_url) as store:
            keys = [(await store.create(name, KeyPolicy()))[0] for name in names]
            assert [k.name for k in await store.list()] == names
            for hostile_id in ["' OR '1'='1", "key_%", "%", keys[0].id + "' --"]:
                assert await store.get(hostile_id) is None
                assert await store.revoke(hostile_id) is None
                assert await store.update(hostile_id, name="pwned") is None
                assert await store.usage.summary(hostile_id) == []
            await store.usage.record(
                [usage_event(keys[0].id, model="'; DROP TABLE usage_events; --")]
            )
            (row,) = await store.usage.summary(keys[0].id)
            assert row.model == "'; DROP TABLE usage_events; --"
            assert await store.count() == 3
            assert all(k.state(datetime.now(UTC)) == "active" for k in await store.list())

    run(scenario())


@pytest.mark.parametrize("junk", ["key_\x00", "\x00", "key_\ud800", "key_" + "a" * 5000])
def test_ids_no_key_can_have_match_nothing(database_url: str, junk: str) -> None:
    async def scenario() -> None:
        async with migrated(database_url) as store:
            await store.create("ci", KeyPolicy())
            assert await store.get(junk) is None
            assert await store.revoke(junk) is None
            assert await store.update(junk, name="x") is None
            assert await store.usage.summary(junk) == []
            assert await store.usage.totals(junk) == (0, 0.0)

    run(scenario())


@pytest.mark.parametrize("name", ["a\x00b", "\ud800", "n" * 201])
def test_names_no_column_can_hold_are_invalid(database_url: str, name: str) -> None:
    async def scenario() -> None:
        async with migrated(database_url) as store:
            with pytest.raises(InvalidRequest):
                await store.create(name, KeyPolicy())
            key, _ = await store.create("ci", KeyPolicy())
            with pytest.raises(InvalidRequest):
                await store.update(key.id, name=name)
            assert [k.name for k in await store.list()] == ["ci"]

    run(scenario())


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////nonexistent-dir/chatgpt-proxy.db",
        "postgresql://postgres@127.0.0.1:1/test",  # nothing listens on port 1
    ],
)
def test_unreachable_database_raises_store_unavailable(url: str) -> None:
    async def scenario() -> None:
        async with await KeyStore.open(url) as store:
            for operation in (
                store.migrate(),
                store.ping(),
                store.list(),
                store.get("key_x"),
                store.count(),
                store.create("ci", KeyPolicy()),
                store.revoke("key_x"),
                store.changed_since(None),
                store.usage.record([usage_event("key_x")]),
                store.usage.summary("key_x"),
                store.usage.totals("key_x"),
            ):
                with pytest.raises(StoreUnavailable) as caught:
                    await operation
                assert caught.value.status == 503
                assert caught.value.__cause__ is not None  # the driver's error, for the logs
        await settle_aiosqlite_threads()

    run(scenario())


async def settle_aiosqlite_threads(timeout: float = 2.0) -> None:
    """Let aiosqlite's workers for failed connects finish before the loop closes.

    After a failed connect aiosqlite queues its worker's stop without awaiting it, and the worker
    then reports to a loop that ``asyncio.run`` may have closed (omnilib/aiosqlite#389).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
        "_connection_worker_thread" in thread.name for thread in threading.enumerate()
    ):
        await asyncio.sleep(0.01)


def test_missing_postgres_database_raises_store_unavailable(postgres_database_url: str) -> None:
    url = postgres_database_url.rsplit("/", 1)[0] + "/cgp_does_not_exist"

    async def scenario() -> None:
        async with await KeyStore.open(url) as store:
            with pytest.raises(StoreUnavailable, match="ping"):
                await store.ping()

    run(scenario())


def test_two_stores_share_one_sqlite_file(sqlite_database_url: str) -> None:
    """The CLI and the server write the same file at once: WAL and busy_timeout let them."""

    async def writer(name: str) -> None:
        async with await KeyStore.open(sqlite_database_url) as store:
            for i in range(15):
                await store.create(f"{name}-{i}", KeyPolicy())

    async def scenario() -> None:
        async with migrated(sqlite_database_url) as store:
            await asyncio.gather(writer("cli"), writer("server"), writer("admin"))
            assert await store.count() == 45

    run(scenario())


def test_the_first_key_is_created_once_by_replicas_starting_together(database_url: str) -> None:
    replicas = 6

    async def start(barrier: asyncio.Barrier) -> str | None:
        # Each replica has its own engine, as separate processes would.
        async with migrated(database_url) as store:
            await barrier.wait()
            created = await store.create_if_empty("default", KeyPolicy(rpm=10))
            return None if created is None else created[1]

    async def scenario() -> None:
        async with migrated(database_url) as store:
            pass  # migrated once first: the race under test is the key's, not the schema's
        barrier = asyncio.Barrier(replicas)
        secrets = await asyncio.gather(*(start(barrier) for _ in range(replicas)))
        assert len([s for s in secrets if s is not None]) == 1, secrets
        async with migrated(database_url) as store:
            (key,) = await store.list()
            assert key.name == "default" and key.policy.rpm == 10
            assert await store.create_if_empty("default", KeyPolicy()) is None

    run(scenario())
