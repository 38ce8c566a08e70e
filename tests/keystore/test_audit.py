"""The audit log in the key store, on SQLite and PostgreSQL: newest first, keyset paged."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from stores import migrated

LONG = timedelta(hours=1)


def test_the_audit_log_pages_newest_first(database_url: str) -> None:
    async def scenario() -> None:
        async with migrated(database_url) as store:
            for n in range(5):
                await store.audit.record("api", "key.create", target=f"key_{n}", address="::1")
            await store.audit.record("cli", "x" * 500, target="\x00" * 300)  # clipped, stored
            first = await store.audit.page(limit=3)
            assert [e.target for e in first[1:]] == ["key_4", "key_3"]
            assert len(first[0].action) == 64
            rest = await store.audit.page(limit=10, before=first[-1].id)
            assert [e.target for e in rest] == ["key_2", "key_1", "key_0"]
            only = await store.audit.page(action="key.create", limit=100)
            assert len(only) == 5 and only[0].to_dict()["actor"] == "api"

    asyncio.run(scenario())
