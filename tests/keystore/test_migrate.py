"""Migrations: the one way the schema is made, on both backends."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from chatgpt_proxy.keystore import KeyPolicy, KeyStore, async_database_url, migrate
from chatgpt_proxy.keystore.schema import VERSION_TABLE, metadata


async def inspect(database_url: str) -> tuple[set[str], list[Any], list[str]]:
    """The tables, the schema's difference from ``metadata``, and the recorded revisions."""
    engine = create_async_engine(async_database_url(database_url))

    def look(conn: sa.Connection) -> tuple[set[str], list[Any], list[str]]:
        tables = set(sa.inspect(conn).get_table_names())
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
        )
        diff = compare_metadata(context, metadata)
        return tables, diff, list(context.get_current_heads())

    try:
        async with engine.connect() as conn:
            return await conn.run_sync(look)
    finally:
        await engine.dispose()


def test_migrated_schema_matches_the_metadata(database_url: str) -> None:
    asyncio.run(migrate(database_url))
    tables, diff, heads = asyncio.run(inspect(database_url))
    assert tables == {
        "client_keys",
        "usage_events",
        "stored_objects",
        "blocked_owners",
        "seen_interactions",
        "holder_sessions",
        "console_sessions",
        "audit_events",
        "usage_key_days",
        "usage_key_weeks",
        "usage_day_totals",
        VERSION_TABLE,
    }
    assert diff == []
    assert heads == ["0007"]


def test_migrating_twice_changes_nothing(database_url: str) -> None:
    async def scenario() -> None:
        async with await KeyStore.open(database_url) as store:
            await store.migrate()
            key, _ = await store.create("ci", KeyPolicy(rpm=5))
            await store.migrate()
            assert await store.list() == [key]

    asyncio.run(scenario())
    assert asyncio.run(inspect(database_url))[2] == ["0007"]


def test_replicas_migrating_at_once_do_not_race(database_url: str) -> None:
    async def scenario() -> None:
        await asyncio.gather(*(migrate(database_url) for _ in range(4)))

    asyncio.run(scenario())
    tables, diff, heads = asyncio.run(inspect(database_url))
    assert "client_keys" in tables and diff == [] and heads == ["0007"]
