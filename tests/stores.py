"""A key store for tests: opened on a database URL, migrated, closed afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from chatgpt_proxy.keystore import KeyStore


@contextlib.asynccontextmanager
async def migrated(database_url: str) -> AsyncIterator[KeyStore]:
    """``async with migrated(url) as store:`` a store whose schema is current."""
    async with await KeyStore.open(database_url) as store:
        await store.migrate()
        yield store
