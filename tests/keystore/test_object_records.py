"""The records of stored objects, read and written directly, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from chatgpt_proxy.keystore import KeyPolicy
from chatgpt_proxy.keystore.objects import StoredObject
from chatgpt_proxy.keystore.references import RESPONSE
from stores import migrated


def test_records_are_kept_found_paged_settled_once_and_forgotten(database_url: str) -> None:
    async def scenario() -> None:
        async with migrated(database_url) as store:
            key, _ = await store.create("owner", KeyPolicy())
            start = datetime.now(UTC)
            files = [
                StoredObject(
                    "file", f"file-{n}", key.id, "openai", "a", start + timedelta(seconds=n)
                )
                for n in range(3)
            ]
            for stored in files:
                await store.objects.record(stored)
            await store.objects.record(
                StoredObject(RESPONSE, "resp_1", key.id, "openai", "b", start)
            )

            assert await store.objects.find("file", "file-1") == files[1]
            assert await store.objects.find(RESPONSE, "file-1") is None  # the kind is in the id
            # A record seen again with ``if_absent`` keeps the first.
            again = StoredObject("file", "file-1", key.id, "openai", "other", start)
            await store.objects.record(again, if_absent=True)
            assert await store.objects.find("file", "file-1") == files[1]

            assert await store.objects.latest(key.id, but=RESPONSE) == files[2]
            page = await store.objects.page(key.id, "file", "file-0", 5, ascending=True)
            assert page == files[1:]
            assert await store.objects.page(key.id, "file", None, 2, ascending=False) == [
                files[2],
                files[1],
            ]
            assert await store.objects.page(key.id, "file", "file-9", 5, ascending=True) is None

            assert await store.objects.settle("file", "file-0")
            assert not await store.objects.settle("file", "file-0")
            await store.objects.forget("file", "file-0")
            assert await store.objects.find("file", "file-0") is None

    asyncio.run(scenario())
