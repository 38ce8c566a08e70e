"""The console's sign-in sessions, in the database so that every replica knows them.

The session id lives only in the operator's cookie; the table holds its SHA-256, so reading the
database opens no session. A session ends when idle too long, when too old whatever its use, or
at logout, which deletes its row::

    secret = await store.sessions.create(address="203.0.113.7")
    session = await store.sessions.find(secret, idle=timedelta(minutes=30), lifetime=...)
    await store.sessions.delete(secret)
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from chatgpt_proxy.keystore.audit import StoreErrors
from chatgpt_proxy.keystore.schema import console_sessions
from chatgpt_proxy.keystore.text import storable
from chatgpt_proxy.keystore.tokens import hash_secret

SESSION_PREFIX = "cs-"  # never "pk-": a session id is not a client key, and looks different
_SESSION_BYTES = 32
# A session's last use is written at most this often: one write per page, not per request.
_TOUCH_EVERY = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    id_hash: str
    created_at: datetime
    seen_at: datetime
    address: str

    @property
    def label(self) -> str:
        """A short name for the audit log: enough to tell sessions apart, useless to sign in."""
        return self.id_hash[:12]


class ConsoleSessions:
    """The ``console_sessions`` table; database failures raise ``StoreUnavailable``."""

    def __init__(self, engine: AsyncEngine, errors: StoreErrors) -> None:
        self._engine = engine
        self._errors = errors

    async def create(self, address: str) -> tuple[str, ConsoleSession]:
        """A new session and its id: the id goes in the cookie, only its hash is stored."""
        secret = SESSION_PREFIX + secrets.token_urlsafe(_SESSION_BYTES)
        now = datetime.now(UTC)
        session = ConsoleSession(hash_secret(secret), now, now, storable(address, 64))
        row = {
            "id_hash": session.id_hash,
            "created_at": now,
            "seen_at": now,
            "address": session.address,
        }
        with self._errors("sessions.create"):
            async with self._engine.begin() as conn:
                await conn.execute(console_sessions.insert().values(row))
        return secret, session

    async def find(
        self, secret: str, *, idle: timedelta, lifetime: timedelta
    ) -> ConsoleSession | None:
        """The live session ``secret`` names, its last use noted; None if none or expired."""
        if not secret.startswith(SESSION_PREFIX) or len(secret) > 128:
            return None
        id_hash = hash_secret(secret)
        now = datetime.now(UTC)
        table = console_sessions
        with self._errors("sessions.find"):
            async with self._engine.begin() as conn:
                row = (
                    await conn.execute(sa.select(table).where(table.c.id_hash == id_hash))
                ).first()
                if row is None:
                    return None
                session = ConsoleSession(**row._mapping)
                if now - session.seen_at > idle or now - session.created_at > lifetime:
                    await conn.execute(table.delete().where(table.c.id_hash == id_hash))
                    return None
                if now - session.seen_at > _TOUCH_EVERY:
                    touch = table.update().where(table.c.id_hash == id_hash).values(seen_at=now)
                    await conn.execute(touch)
        return session

    async def delete(self, secret: str) -> None:
        """End a session (logout): its id opens nothing afterwards, on any replica."""
        statement = console_sessions.delete().where(
            console_sessions.c.id_hash == hash_secret(secret)
        )
        with self._errors("sessions.delete"):
            async with self._engine.begin() as conn:
                await conn.execute(statement)

    async def sweep(self, *, idle: timedelta, lifetime: timedelta) -> int:
        """Delete every expired session; the number deleted."""
        now = datetime.now(UTC)
        table = console_sessions
        statement = table.delete().where(
            sa.or_(table.c.seen_at < now - idle, table.c.created_at < now - lifetime)
        )
        with self._errors("sessions.sweep"):
            async with self._engine.begin() as conn:
                return int((await conn.execute(statement)).rowcount or 0)
