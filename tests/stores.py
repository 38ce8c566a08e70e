"""A key store for tests: opened on a database URL, migrated, closed afterwards; or a database
taken to a given revision, up or down, to test a migration."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import sqlalchemy as sa
from alembic import command

from chatgpt_proxy.keystore import KeyStore, migrator
from chatgpt_proxy.keystore.engine import create_engine


@contextlib.asynccontextmanager
async def migrated(database_url: str) -> AsyncIterator[KeyStore]:
    """``async with migrated(url) as store:`` a store whose schema is current."""
    async with await KeyStore.open(database_url) as store:
        await store.migrate()
        yield store


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
