"""The key store: client keys, durable in SQLite or PostgreSQL, and the parts that share its
database (usage, stored objects, self-service owners, console sessions, the audit log).

Every database failure is translated here, at the one boundary, into ``StoreUnavailable``; each
part is handed that boundary.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import EllipsisType, TracebackType
from typing import Any

import sqlalchemy as sa
from alembic.util import CommandError
from sqlalchemy.ext.asyncio import AsyncEngine

from chatgpt_proxy.errors import StoreUnavailable
from chatgpt_proxy.keystore import migrator, usage_queries
from chatgpt_proxy.keystore.audit import AuditLog
from chatgpt_proxy.keystore.engine import create_engine, exclusive
from chatgpt_proxy.keystore.key_rows import (
    checked_name,
    fetch_key,
    fetch_keys,
    new_key,
    policy_row,
    possible_id,
)
from chatgpt_proxy.keystore.object_records import ObjectRecords
from chatgpt_proxy.keystore.owners import Owners
from chatgpt_proxy.keystore.schema import aware_utc, client_keys
from chatgpt_proxy.keystore.sessions import ConsoleSessions
from chatgpt_proxy.keystore.usage import UsageLedger
from chatgpt_proxy.keystore.values import ClientKey, KeyPolicy

# Any fixed 64-bit number, the same in every replica: it names the lock, nothing more.
_FIRST_KEY_LOCK = 0x6367705F66697273  # b"cgp_firs"
SORTABLE = ("created_at", "updated_at", "name", "prefix", "expires_at")


class KeyStore:
    """Client keys, and the parts of the store that share their database.

    >>> store = await KeyStore.open("sqlite:///./chatgpt-proxy.db")  # or postgresql://...
    >>> await store.migrate()                  # on every start: cheap when current
    >>> key, secret = await store.create("ci", KeyPolicy(rpm=60, models=("gpt-4o*",)))
    >>> secret                                 # shown once; only its hash is stored
    'pk-...'
    >>> await store.usage.record([UsageEvent(key.id, "gpt-4o", "openai#1", ...)])
    >>> await store.usage.totals(key.id)
    (15, 0.25)
    >>> await store.revoke(key.id)
    >>> await store.close()                    # or: async with await KeyStore.open(url) as store
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self.usage = UsageLedger(engine, _store_errors)  # metered requests and their reports
        self.objects = ObjectRecords(engine, _store_errors)  # owners of stored upstream objects
        self.owners = Owners(engine, _store_errors)  # self-service keys' owners and sessions
        self.sessions = ConsoleSessions(engine, _store_errors)  # the console's sign-ins
        self.audit = AuditLog(engine, _store_errors)  # every admin action

    @classmethod
    async def open(cls, database_url: str) -> KeyStore:
        """A store for ``database_url`` (``ConfigError`` if unusable); connects on first use."""
        return cls(create_engine(database_url))

    async def close(self) -> None:
        await self._engine.dispose()

    async def __aenter__(self) -> KeyStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def migrate(self) -> None:
        """Bring the schema up to date; safe on every start, from several processes at once."""
        with _store_errors("migrate"):
            await migrator.upgrade(self._engine)

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the database answers (for /readyz)."""
        with _store_errors("ping"):
            async with self._engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))

    async def create(
        self,
        name: str,
        policy: KeyPolicy,
        expires_at: datetime | None = None,
        *,
        owner: str | None = None,
    ) -> tuple[ClientKey, str]:
        """A new key and its secret: the only time the secret exists outside its client."""
        key, secret, row = new_key(name, policy, expires_at, owner)
        with _store_errors("create"):
            async with self._engine.begin() as conn:
                await conn.execute(client_keys.insert().values(row))
        return key, secret

    async def create_if_empty(self, name: str, policy: KeyPolicy) -> tuple[ClientKey, str] | None:
        """Create a key only if there is none yet (a first start's key); ``None`` if there was.

        Once, however many replicas start together: they take turns, and only the first finds
        the table empty.
        """
        key, secret, row = new_key(name, policy, None, None)
        with _store_errors("create_if_empty"):
            async with exclusive(self._engine, _FIRST_KEY_LOCK) as conn:
                if await conn.scalar(sa.select(client_keys.c.id).limit(1)) is not None:
                    return None
                await conn.execute(client_keys.insert().values(row))
        return key, secret

    async def get(self, key_id: str) -> ClientKey | None:
        if not possible_id(key_id):
            return None
        with _store_errors("get"):
            async with self._engine.connect() as conn:
                return await fetch_key(conn, key_id)

    async def list(self) -> builtins.list[ClientKey]:
        """Every key, revoked and expired ones included, oldest first."""
        query = sa.select(client_keys).order_by(client_keys.c.created_at, client_keys.c.id)
        return await self._fetch_keys("list", query)

    async def page(
        self,
        *,
        search: str = "",
        sort: str = "created_at",
        descending: bool = True,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[builtins.list[ClientKey], int]:
        """One page of keys whose name contains ``search`` or whose prefix starts with it,
        sorted by ``sort`` (a column in ``SORTABLE``), and how many keys match in all."""
        column = client_keys.c[sort if sort in SORTABLE else "created_at"]
        order = (
            [column.desc(), client_keys.c.id.desc()] if descending else [column, client_keys.c.id]
        )
        where = usage_queries.key_search(search)
        query = sa.select(client_keys).where(where).order_by(*order).offset(offset).limit(limit)
        keys = await self._fetch_keys("page", query)
        with _store_errors("page"):
            async with self._engine.connect() as conn:
                total = await conn.scalar(
                    sa.select(sa.func.count()).select_from(client_keys).where(where)
                )
        return keys, int(total or 0)

    async def changed_since(self, since: datetime | None) -> builtins.list[ClientKey]:
        """Keys created or changed at or after ``since`` (every key for ``None``), by updated_at.

        ``updated_at`` comes from the writer's clock, and a transaction may commit after a later
        one, so a poller should overlap its windows by a few seconds rather than pass the exact
        time of its last poll.
        """
        query = sa.select(client_keys).order_by(client_keys.c.updated_at, client_keys.c.id)
        if since is not None:
            query = query.where(client_keys.c.updated_at >= aware_utc(since, "since"))
        return await self._fetch_keys("changed_since", query)

    async def count(self) -> int:
        with _store_errors("count"):
            async with self._engine.connect() as conn:
                total = await conn.scalar(sa.select(sa.func.count()).select_from(client_keys))
        return int(total or 0)

    async def revoke(self, key_id: str) -> ClientKey | None:
        """Revoke a key (idempotent: a second revoke keeps the first ``revoked_at``)."""
        now = datetime.now(UTC)
        values = {"revoked_at": sa.func.coalesce(client_keys.c.revoked_at, now), "updated_at": now}
        return await self._update("revoke", key_id, values)

    async def update(
        self,
        key_id: str,
        *,
        name: str | None = None,
        policy: KeyPolicy | None = None,
        expires_at: datetime | EllipsisType | None = ...,
    ) -> ClientKey | None:
        """Change what is given (``expires_at=None`` clears the expiry); None if no such key."""
        values: dict[str, Any] = {"updated_at": datetime.now(UTC)}
        if name is not None:
            values["name"] = checked_name(name)
        if policy is not None:
            values.update(policy_row(policy))
        if expires_at is None:
            values["expires_at"] = None
        elif isinstance(expires_at, datetime):
            values["expires_at"] = aware_utc(expires_at, "expires_at")
        return await self._update("update", key_id, values)

    async def _fetch_keys(self, operation: str, query: sa.Select[Any]) -> builtins.list[ClientKey]:
        with _store_errors(operation):
            async with self._engine.connect() as conn:
                return await fetch_keys(conn, query)

    async def _update(
        self, operation: str, key_id: str, values: Mapping[str, Any]
    ) -> ClientKey | None:
        if not possible_id(key_id):
            return None
        statement = client_keys.update().where(client_keys.c.id == key_id).values(dict(values))
        with _store_errors(operation):
            async with self._engine.begin() as conn:
                if (await conn.execute(statement)).rowcount == 0:
                    return None
                return await fetch_key(conn, key_id)


async def migrate(database_url: str) -> None:
    """Migrate the database at ``database_url`` to the current schema (for the CLI and deploys)."""
    async with await KeyStore.open(database_url) as store:
        await store.migrate()


@contextlib.contextmanager
def _store_errors(operation: str) -> Iterator[None]:
    """Translate the database's failures into the proxy's one store error.

    The message names the operation and the exception class only: SQLAlchemy's own message can
    carry SQL parameters, and this one may reach a client in a 503. The cause stays chained.
    """
    try:
        yield
    except (sa.exc.SQLAlchemyError, OSError, TimeoutError, CommandError) as exc:
        raise StoreUnavailable(
            f"The key store is unavailable ({operation}: {type(exc).__name__})."
        ) from exc
