"""A key store for tests: opened on a database URL, migrated, closed afterwards; usage events;
or a database taken to a given revision, up or down, to test a migration."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from alembic import command

from chatgpt_proxy.keystore import KeyStore, UsageEvent, migrator
from chatgpt_proxy.keystore.engine import create_engine


@contextlib.asynccontextmanager
async def migrated(database_url: str) -> AsyncIterator[KeyStore]:
    """``async with migrated(url) as store:`` a store whose schema is current."""
    async with await KeyStore.open(database_url) as store:
        await store.migrate()
        yield store


def usage_event(key_id: str, **changes: Any) -> UsageEvent:
    """A chat completion's usage by ``key_id``, with ``changes`` to its fields."""
    fields: dict[str, Any] = {
        "key_id": key_id,
        "model": "gpt-4o-mini",
        "upstream": "openai#1",
        "endpoint": "/v1/chat/completions",
        "status": 200,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "latency_ms": 120,
        "cost": 0.25,
    }
    fields.update(changes)
    return UsageEvent(**fields)


async def migrate_to(database_url: str, revision: str, *, down: bool = False) -> None:
    """Upgrade (or with ``down``, downgrade) the database to ``revision``."""

    def run(connection: sa.Connection) -> None:
        config = migrator.alembic_config()
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)

    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(run)
    finally:
        await engine.dispose()
