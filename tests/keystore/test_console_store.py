"""What the console keeps in the key store, on SQLite and PostgreSQL: sessions (hashed),
the audit log (newest first, keyset paged), key pages (searched, sorted) and usage reports."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import command

from chatgpt_proxy.keystore import KeyPolicy, KeyStore, UsageEvent, migrator
from chatgpt_proxy.keystore.schema import client_keys, usage_events

LONG = timedelta(hours=1)


@contextlib.asynccontextmanager
async def migrated(database_url: str) -> AsyncIterator[KeyStore]:
    async with await KeyStore.open(database_url) as store:
        await store.migrate()
        yield store


def test_key_pages_are_searched_and_sorted_in_the_database(database_url: str) -> None:
    async def scenario() -> None:
        async with migrated(database_url) as store:
            for name in ("beta", "Alpha", "gamma_1", "gamma%2"):
                await store.create(name, KeyPolicy())
            keys, total = await store.page(sort="name", descending=False, limit=2)
            assert total == 4 and [k.name for k in keys] == ["Alpha", "beta"]
            keys, total = await store.page(search="ALPHA")
            assert total == 1 and keys[0].name == "Alpha"
            keys, total = await store.page(search="a_1")
            assert total == 1 and keys[0].name == "gamma_1"
            keys, total = await store.page(search="%")
            assert total == 1
            keys, _ = await store.page(search=keys[0].prefix)
            assert [k.name for k in keys] == ["gamma%2"]
            keys, total = await store.page(offset=3, limit=2, sort="no_such_column")
            assert total == 4 and len(keys) == 1

    asyncio.run(scenario())


def test_usage_reports_group_by_day_model_and_key(database_url: str) -> None:
    async def scenario() -> None:
        async with migrated(database_url) as store:
            key, _ = await store.create("k", KeyPolicy())
            now = datetime.now(UTC)
            base = {"key_id": key.id, "upstream": "openai#1", "endpoint": "chat.completions"}
            await store.record_usage(
                [
                    UsageEvent(
                        **base,
                        model="a",
                        status=200,
                        prompt_tokens=1,
                        completion_tokens=2,
                        total_tokens=3,
                        latency_ms=10,
                        cost=0.25,
                        created_at=now,
                    ),
                    UsageEvent(
                        **base,
                        model="b",
                        status=502,
                        prompt_tokens=0,
                        completion_tokens=0,
                        total_tokens=0,
                        latency_ms=5,
                        created_at=now,
                        requests=2,
                    ),
                    UsageEvent(
                        **base,
                        model="a",
                        status=200,
                        prompt_tokens=1,
                        completion_tokens=1,
                        total_tokens=2,
                        latency_ms=1,
                        created_at=now - timedelta(days=3),
                    ),
                ]
            )
            today = now.date()
            [day] = await store.usage_report(today, today, "day")
            assert day["group"] == today.isoformat() and day["requests"] == 3
            models = await store.usage_report(today - timedelta(days=5), today, "model")
            assert [(r["group"], r["total_tokens"]) for r in models] == [("a", 5), ("b", 0)]
            [by_key] = await store.usage_report(today, today, "key")
            assert by_key["group"] == key.id and float(by_key["cost"]) == 0.25
            [by_upstream] = await store.usage_report(today, today, "upstream")
            assert by_upstream["group"] == "openai#1" and by_upstream["requests"] == 3
            # A second write adds to the day's sums; an event of an unknown key adds nothing.
            refused = await store.record_usage(
                [
                    UsageEvent(
                        **base,
                        model="a",
                        status=200,
                        prompt_tokens=1,
                        completion_tokens=1,
                        total_tokens=2,
                        latency_ms=1,
                        created_at=now,
                    ),
                    UsageEvent(
                        **{**base, "key_id": "key_nobody"},
                        model="a",
                        status=200,
                        prompt_tokens=9,
                        completion_tokens=9,
                        total_tokens=18,
                        latency_ms=1,
                        created_at=now,
                    ),
                ]
            )
            assert len(refused) == 1
            [day] = await store.usage_report(today, today, "day")
            assert (day["requests"], day["total_tokens"]) == (4, 5)
            minutes = await store.usage_by_minute(now - timedelta(minutes=5))
            assert [(m["requests"], m["errors"], m["tokens"]) for m in minutes] == [(4, 2, 5)]
            assert minutes[0]["minute"] == now.strftime("%Y-%m-%dT%H:%M")

    asyncio.run(scenario())


def _upgrade_to_0002(connection: sa.Connection) -> None:
    config = migrator.alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "0002")


def test_migration_0003_sums_the_usage_recorded_before_it(database_url: str) -> None:
    async def scenario() -> None:
        async with await KeyStore.open(database_url) as store:
            async with store._engine.begin() as conn:  # the schema before the console
                await conn.run_sync(_upgrade_to_0002)
            key_id = "key_0000000000000001"
            now = datetime(2026, 11, 30, 23, 30, tzinfo=UTC)
            async with store._engine.begin() as conn:
                await conn.execute(
                    client_keys.insert().values(
                        id=key_id,
                        name="old",
                        key_hash="0" * 64,
                        prefix="pk-old",
                        created_at=now,
                        updated_at=now,
                    )
                )
                base = {
                    "key_id": key_id,
                    "upstream": "openai#1",
                    "endpoint": "chat",
                    "status": 200,
                    "prompt_tokens": 1,
                    "completion_tokens": 1,
                    "latency_ms": 1,
                }
                await conn.execute(
                    usage_events.insert(),
                    [
                        {
                            **base,
                            "model": "a",
                            "total_tokens": 2,
                            "requests": 1,
                            "cost": 0.5,
                            "created_at": now,
                        },
                        {
                            **base,
                            "model": "a",
                            "total_tokens": 3,
                            "requests": 2,
                            "cost": None,
                            "created_at": now + timedelta(minutes=10),
                        },
                        {
                            **base,
                            "model": "a",
                            "total_tokens": 7,
                            "requests": 1,
                            "cost": 0.25,
                            "created_at": now + timedelta(hours=1),
                        },  # the next UTC day
                    ],
                )
            await store.migrate()
            rows = await store.usage_report(now.date(), now.date() + timedelta(days=1), "day")
            assert [
                (r["group"], r["requests"], r["total_tokens"], float(r["cost"])) for r in rows
            ] == [
                ("2026-11-30", 3, 5, 0.5),
                ("2026-12-01", 1, 7, 0.25),
            ]

    asyncio.run(scenario())
