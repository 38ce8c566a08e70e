"""The console's sessions in the key store, on SQLite and PostgreSQL: stored hashed, ended."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import sqlalchemy as sa

from chatgpt_proxy.keystore import hash_secret
from chatgpt_proxy.keystore.schema import console_sessions
from stores import migrated

LONG = timedelta(hours=1)


def test_sessions_are_stored_hashed_and_end(database_url: str) -> None:
    async def scenario() -> None:
        async with migrated(database_url) as store:
            secret, session = await store.sessions.create("203.0.113.7")
            assert secret.startswith("cs-") and session.id_hash == hash_secret(secret)
            found = await store.sessions.find(secret, idle=LONG, lifetime=LONG)
            assert found is not None and found.address == "203.0.113.7"
            assert await store.sessions.find("cs-unknown", idle=LONG, lifetime=LONG) is None
            assert await store.sessions.find("pk-" + secret[3:], idle=LONG, lifetime=LONG) is None
            await store.sessions.delete(secret)
            assert await store.sessions.find(secret, idle=LONG, lifetime=LONG) is None
            # An expired session is refused and its row removed.
            old, _ = await store.sessions.create("a")
            assert await store.sessions.find(old, idle=timedelta(0), lifetime=LONG) is None
            assert await store.sessions.find(old, idle=LONG, lifetime=LONG) is None
            # The sweep removes those nobody came back for.
            await store.sessions.create("b")
            assert await store.sessions.sweep(idle=timedelta(0), lifetime=LONG) == 1
            async with store._engine.connect() as conn:  # the test looks at the table itself
                count = await conn.scalar(sa.select(sa.func.count()).select_from(console_sessions))
            assert count == 0

    asyncio.run(scenario())
