"""The records of stored objects (the ``stored_objects`` table): the statements and the part of
the key store that runs them at its error boundary.

``objects.ObjectOwners`` remembers the records found; callers go through it::

    await store.objects.record(StoredObject("file", "file-1", key.id, "openai", "openai#2", now))
    found = await store.objects.find("file", "file-1")
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from chatgpt_proxy.keystore.audit import StoreErrors
from chatgpt_proxy.keystore.objects import StoredObject
from chatgpt_proxy.keystore.schema import aware_utc, stored_objects


class ObjectRecords:
    """Who owns each stored object; database failures raise ``StoreUnavailable``."""

    def __init__(self, engine: AsyncEngine, errors: StoreErrors) -> None:
        self._engine = engine
        self._errors = errors

    async def record(self, stored: StoredObject, *, if_absent: bool = False) -> None:
        """Record who owns a stored upstream object; with ``if_absent``, a record of that id
        already there (written by any replica) is kept as it is."""
        with self._errors("record_object"):
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(insert_statement(stored))
            except sa.exc.IntegrityError:
                if not if_absent:
                    raise

    async def forget(self, kind: str, object_id: str) -> None:
        with self._errors("forget_object"):
            async with self._engine.begin() as conn:
                await conn.execute(delete_statement(kind, object_id))

    async def settle(self, kind: str, object_id: str) -> bool:
        """Mark a stored object's usage metered; True only for the call that did."""
        statement = settle_statement(kind, object_id, datetime.now(UTC))
        with self._errors("settle_object"):
            async with self._engine.begin() as conn:
                return (await conn.execute(statement)).rowcount == 1

    async def latest(self, owner: str, but: str) -> StoredObject | None:
        """``owner``'s latest stored object of any kind but ``but``."""
        with self._errors("latest_object"):
            async with self._engine.connect() as conn:
                row = (await conn.execute(latest_query(owner, but))).first()
        return None if row is None else from_row(row._mapping)

    async def page(
        self, owner: str, kind: str, after: str | None, limit: int, ascending: bool
    ) -> list[StoredObject] | None:
        """A page of ``owner``'s records of ``kind`` (see ``ObjectOwners.page``)."""
        with self._errors("page_objects"):
            async with self._engine.connect() as conn:
                anchor = None
                if after is not None:
                    found = (await conn.execute(anchor_query(owner, kind, after))).first()
                    if found is None:
                        return None
                    anchor = (found.created_at, found.object_id)
                query = page_query(owner, kind, anchor, limit, ascending)
                rows = (await conn.execute(query)).all()
        return [from_row(row._mapping) for row in rows]

    async def find(self, kind: str, object_id: str) -> StoredObject | None:
        with self._errors("find_object"):
            async with self._engine.connect() as conn:
                row = (await conn.execute(find_query(kind, object_id))).first()
        return None if row is None else from_row(row._mapping)


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


def delete_statement(kind: str, object_id: str) -> sa.Delete:
    return stored_objects.delete().where(
        stored_objects.c.kind == kind, stored_objects.c.object_id == object_id
    )


def settle_statement(kind: str, object_id: str, now: datetime) -> sa.Update:
    """Marks the object settled unless it already was: one row changed means this call did."""
    return (
        stored_objects.update()
        .where(
            stored_objects.c.kind == kind,
            stored_objects.c.object_id == object_id,
            stored_objects.c.settled_at.is_(None),
        )
        .values(settled_at=aware_utc(now, "settled_at"))
    )


def latest_query(owner: str, but: str) -> sa.Select[Any]:
    """``owner``'s latest object of any kind but ``but``."""
    table = stored_objects.c
    return (
        sa.select(stored_objects)
        .where(table.owner_key_id == owner, table.kind != but)
        .order_by(table.created_at.desc())
        .limit(1)
    )


def anchor_query(owner: str, kind: str, object_id: str) -> sa.Select[Any]:
    """Where ``owner``'s object ``object_id`` sits in the order of a list."""
    table = stored_objects.c
    return sa.select(table.created_at, table.object_id).where(
        table.owner_key_id == owner, table.kind == kind, table.object_id == object_id
    )


def page_query(
    owner: str, kind: str, anchor: tuple[datetime, str] | None, limit: int, ascending: bool
) -> sa.Select[Any]:
    """``owner``'s objects of ``kind`` in creation order (ids break ties), past ``anchor``."""
    table = stored_objects.c
    query = sa.select(stored_objects).where(table.owner_key_id == owner, table.kind == kind)
    if anchor is not None:
        created_at, object_id = anchor
        if ascending:
            query = query.where(
                (table.created_at > created_at)
                | ((table.created_at == created_at) & (table.object_id > object_id))
            )
        else:
            query = query.where(
                (table.created_at < created_at)
                | ((table.created_at == created_at) & (table.object_id < object_id))
            )
    if ascending:
        return query.order_by(table.created_at, table.object_id).limit(limit)
    return query.order_by(table.created_at.desc(), table.object_id.desc()).limit(limit)
