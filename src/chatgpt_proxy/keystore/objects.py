"""Stored upstream objects: which client key owns each id the proxy handed out (DESIGN §3.8).

The upstream keeps some objects (a Responses API response with ``store: true``, the default;
later files, batches, vector stores) in the account of the key that created them, and any key
of that account can read, cancel or delete them. The proxy records each one's owner (the client
key) and holder (the upstream key) in the database, before the client sees the id, so every
replica can refuse it to other keys and send its follow-ups to the account that holds it.

The statements are here; ``KeyStore`` runs them at its one error boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from chatgpt_proxy.keystore.schema import aware_utc, stored_objects
from chatgpt_proxy.memo import Memo

if TYPE_CHECKING:
    from chatgpt_proxy.keystore.store import KeyStore

RESPONSE = "response"
_MAX_REMEMBERED = 10_000  # records found; ids come from clients


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object the upstream stores: its owner here, its holder upstream."""

    kind: str
    object_id: str
    owner_key_id: str
    upstream: str  # the upstream's configured name
    upstream_alias: str  # the key holding it, e.g. "openai#2"
    created_at: datetime


class ObjectOwners:
    """The owners of stored objects, in the key store, with the ones found remembered.

    Records never change, so a record found may be remembered; an id not found is asked of
    the database every time, since another replica may have recorded it a moment ago.

    >>> owners = ObjectOwners(store)
    >>> await owners.record(StoredObject("response", "resp_1", key.id, "openai", "openai#2", now))
    >>> (await owners.find("response", "resp_1")).upstream_alias
    'openai#2'
    """

    def __init__(self, store: KeyStore) -> None:
        self._store = store
        self._found: Memo[tuple[str, str], StoredObject] = Memo(_MAX_REMEMBERED)

    async def record(self, stored: StoredObject) -> None:
        """Write the record (``StoreUnavailable`` if it cannot be written)."""
        await self._store.record_object(stored)
        self._found.remember((stored.kind, stored.object_id), stored)

    async def find(self, kind: str, object_id: str) -> StoredObject | None:
        found = self._found.get((kind, object_id))
        if found is None:
            found = await self._store.find_object(kind, object_id)
            if found is not None:
                self._found.remember((kind, object_id), found)
        return found


def insert_statement(stored: StoredObject) -> sa.Insert:
    return stored_objects.insert().values(
        kind=stored.kind,
        object_id=stored.object_id,
        owner_key_id=stored.owner_key_id,
        upstream=stored.upstream,
        upstream_alias=stored.upstream_alias,
        created_at=aware_utc(stored.created_at, "created_at"),
    )


def find_query(kind: str, object_id: str) -> sa.Select[Any]:
    return sa.select(stored_objects).where(
        stored_objects.c.kind == kind, stored_objects.c.object_id == object_id
    )


def from_row(row: sa.RowMapping) -> StoredObject:
    return StoredObject(
        kind=row["kind"],
        object_id=row["object_id"],
        owner_key_id=row["owner_key_id"],
        upstream=row["upstream"],
        upstream_alias=row["upstream_alias"],
        created_at=row["created_at"],
    )
