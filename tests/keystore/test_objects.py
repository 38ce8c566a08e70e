"""Owners of stored objects, on SQLite and on PostgreSQL: written once, read by any store."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from chatgpt_proxy.errors import StoreUnavailable
from chatgpt_proxy.keystore import KeyPolicy, KeyStore
from chatgpt_proxy.keystore.objects import ObjectOwners, StoredObject
from chatgpt_proxy.keystore.references import RESPONSE


def test_a_record_is_found_by_every_store_on_the_database(database_url: str) -> None:
    async def scenario() -> None:
        async with await KeyStore.open(database_url) as store:
            await store.migrate()
            key, _ = await store.create("owner", KeyPolicy())
            owners = ObjectOwners(store)
            assert await owners.find(RESPONSE, "resp_1") is None
            stored = StoredObject(
                RESPONSE, "resp_1", key.id, "openai", "openai#2", datetime.now(UTC)
            )
            await owners.record(stored)
            async with await KeyStore.open(database_url) as other:  # another replica's
                found = await ObjectOwners(other).find(RESPONSE, "resp_1")
            assert found == stored
            # The kind is part of the id: a file may have the id of a response.
            assert await owners.find("file", "resp_1") is None

    asyncio.run(scenario())


def test_an_id_not_found_is_asked_again_and_a_record_found_is_remembered(
    sqlite_database_url: str,
) -> None:
    async def scenario() -> None:
        async with await KeyStore.open(sqlite_database_url) as store:
            await store.migrate()
            key, _ = await store.create("owner", KeyPolicy())
            mine, theirs = ObjectOwners(store), ObjectOwners(store)
            assert await theirs.find(RESPONSE, "resp_2") is None
            now = datetime.now(UTC)
            await mine.record(StoredObject(RESPONSE, "resp_2", key.id, "openai", "openai#1", now))
            found = await theirs.find(RESPONSE, "resp_2")  # not "not found" from before
            assert found is not None
            _drop_table(sqlite_database_url)  # a record found once needs no database again
            assert await theirs.find(RESPONSE, "resp_2") == found
            with pytest.raises(StoreUnavailable):
                await theirs.find(RESPONSE, "resp_3")

    asyncio.run(scenario())


def _drop_table(sqlite_url: str) -> None:
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        conn.execute("DROP TABLE stored_objects")


def test_an_unreachable_database_is_store_unavailable() -> None:
    async def scenario() -> None:
        async with await KeyStore.open("postgresql://postgres@127.0.0.1:1/none") as store:
            owners = ObjectOwners(store)
            now = datetime.now(UTC)
            with pytest.raises(StoreUnavailable):
                await owners.record(StoredObject(RESPONSE, "resp_4", "key_x", "openai", "a", now))
            with pytest.raises(StoreUnavailable):
                await owners.find(RESPONSE, "resp_4")

    asyncio.run(scenario())


def test_records_page_settle_once_and_go_when_their_object_is_deleted(database_url: str) -> None:
    async def scenario() -> None:
        async with await KeyStore.open(database_url) as store:
            await store.migrate()
            key, _ = await store.create("owner", KeyPolicy())
            other, _ = await store.create("other", KeyPolicy())
            owners = ObjectOwners(store)
            start = datetime.now(UTC)
            for n in range(3):
                at = start + timedelta(seconds=n)
                await owners.record(StoredObject("file", f"file-{n}", key.id, "openai", "a", at))
            await owners.record(StoredObject("file", "file-x", other.id, "openai", "a", start))
            await owners.record(StoredObject(RESPONSE, "resp_9", key.id, "openai", "b", start))

            page = await owners.page(key.id, "file", after=None, limit=2, ascending=False)
            assert page is not None
            assert [r.object_id for r in page[0]] == ["file-2", "file-1"] and page[1]
            page = await owners.page(key.id, "file", after="file-1", limit=2, ascending=False)
            assert page is not None and [r.object_id for r in page[0]] == ["file-0"]
            assert not page[1]
            page = await owners.page(key.id, "file", after="file-0", limit=5, ascending=True)
            assert page is not None and [r.object_id for r in page[0]] == ["file-1", "file-2"]
            # Another key's id is no place to start from.
            assert (
                await owners.page(key.id, "file", after="file-x", limit=5, ascending=True) is None
            )

            # The home of new objects: the latest one that is not a response.
            home = await ObjectOwners(store).home(key.id)
            assert home is not None and home.object_id == "file-2"

            # Settled once, whichever store (replica) asks first.
            assert await owners.settle("file", "file-0")
            assert not await ObjectOwners(store).settle("file", "file-0")

            # Recorded again when seen again: the first record stays.
            again = StoredObject("file", "file-0", other.id, "openai", "b", start)
            await owners.record(again, if_absent=True)
            found = await ObjectOwners(store).find("file", "file-0")
            assert found is not None and found.owner_key_id == key.id

            await owners.forget("file", "file-0")
            assert await owners.find("file", "file-0") is None
            # Revoking the owner keeps its records.
            await store.revoke(key.id)
            assert await ObjectOwners(store).find("file", "file-1") is not None

    asyncio.run(scenario())
