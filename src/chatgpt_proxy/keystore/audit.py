"""The audit log: every admin action, from the console, the admin API or the CLI.

An entry names who acted (``console:<session>``, ``api``, ``cli``), what they did, on what and
from where; never a secret (a new key's secret, the admin key, a session id)::

    await store.audit.record("api", "key.create", target=key.id, address="203.0.113.7")
    page = await store.audit.page(limit=50)          # newest first
    older = await store.audit.page(limit=50, before=page[-1].id)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from chatgpt_proxy.keystore.schema import audit_events
from chatgpt_proxy.keystore.text import storable

StoreErrors = Callable[[str], contextlib.AbstractContextManager[None]]
_TEXT_LIMITS = {"actor": 64, "action": 64, "target": 200, "address": 64}


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    created_at: datetime
    actor: str
    action: str
    target: str | None
    address: str | None
    detail: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "address": self.address,
            "detail": self.detail,
        }


class AuditLog:
    """The ``audit_events`` table; database failures raise ``StoreUnavailable``."""

    def __init__(self, engine: AsyncEngine, errors: StoreErrors) -> None:
        self._engine = engine
        self._errors = errors

    async def record(
        self,
        actor: str,
        action: str,
        *,
        target: str | None = None,
        address: str | None = None,
        detail: str | None = None,
    ) -> None:
        row: dict[str, Any] = {"created_at": datetime.now(UTC), "detail": detail}
        values = {"actor": actor, "action": action, "target": target, "address": address}
        for name, value in values.items():
            # Targets may come from a request (a key id in a path): clipped to the column.
            row[name] = None if value is None else storable(value, _TEXT_LIMITS[name])
        if detail is not None:
            row["detail"] = storable(detail, 2000)
        with self._errors("audit.record"):
            async with self._engine.begin() as conn:
                await conn.execute(audit_events.insert().values(row))

    async def page(
        self, *, limit: int = 50, before: int | None = None, action: str | None = None
    ) -> list[AuditEntry]:
        """Up to ``limit`` entries, newest first, older than the entry ``before`` if given.

        Keyset paging on the primary key: as fast on the millionth page as on the first.
        """
        query = sa.select(audit_events).order_by(audit_events.c.id.desc()).limit(limit)
        if before is not None:
            query = query.where(audit_events.c.id < before)
        if action:
            query = query.where(audit_events.c.action == action)
        with self._errors("audit.page"):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        return [AuditEntry(**row._mapping) for row in rows]
