"""The key store: client keys and their usage, durable in SQLite or PostgreSQL.

Every database error is translated here, at the one boundary, into ``StoreUnavailable``.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import secrets
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, time
from types import EllipsisType, TracebackType
from typing import Any

import sqlalchemy as sa
from alembic.util import CommandError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatgpt_proxy.errors import InvalidRequest, StoreUnavailable
from chatgpt_proxy.keystore import migrator
from chatgpt_proxy.keystore.engine import create_engine
from chatgpt_proxy.keystore.models import ClientKey, KeyPolicy, UsageEvent, UsageRow
from chatgpt_proxy.keystore.schema import client_keys, usage_events
from chatgpt_proxy.keystore.tokens import display_prefix, hash_secret, new_secret

MAX_NAME_LENGTH = 200
_POLICY_COLUMNS = tuple(name for name in KeyPolicy.field_names() if name != "models")
_EVENT_TEXT_LIMITS = {"model": 200, "upstream": 100, "endpoint": 100}


class KeyStore:
    """Client keys and their usage.

    >>> store = await KeyStore.open("sqlite:///./chatgpt-proxy.db")
    >>> await store.migrate()
    >>> key, secret = await store.create("ci", KeyPolicy(rpm=60, models=("gpt-4o*",)))
    >>> secret                      # shown once; only its hash is stored
    'pk-...'
    >>> await store.revoke(key.id)
    >>> await store.close()
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @classmethod
    async def open(cls, database_url: str) -> KeyStore:
        """A store for ``database_url``; raises ``ConfigError`` for a URL it cannot use."""
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
        """Bring the schema up to date; safe to run on every start, from several processes."""
        with _store_errors("migrate"):
            await migrator.upgrade(self._engine)

    async def ping(self) -> None:
        with _store_errors("ping"):
            async with self._engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))

    async def create(
        self, name: str, policy: KeyPolicy, expires_at: datetime | None = None
    ) -> tuple[ClientKey, str]:
        """A new key and its plaintext secret: the only time the secret exists outside a client."""
        secret = new_secret()
        now = _utcnow()
        key = ClientKey(
            id="key_" + secrets.token_hex(8),
            name=_checked_name(name),
            prefix=display_prefix(secret),
            key_hash=hash_secret(secret),
            created_at=now,
            updated_at=now,
            expires_at=_aware(expires_at, "expires_at"),
            revoked_at=None,
            policy=policy,
        )
        row = {
            "id": key.id,
            "name": key.name,
            "prefix": key.prefix,
            "key_hash": key.key_hash,
            "created_at": key.created_at,
            "updated_at": key.updated_at,
            "expires_at": key.expires_at,
            "revoked_at": None,
            **_policy_row(policy),
        }
        with _store_errors("create"):
            async with self._engine.begin() as conn:
                await conn.execute(client_keys.insert().values(row))
        return key, secret

    async def get(self, key_id: str) -> ClientKey | None:
        with _store_errors("get"):
            async with self._engine.connect() as conn:
                return await _fetch_key(conn, key_id)

    async def list(self) -> builtins.list[ClientKey]:
        """Every key, revoked and expired ones included, oldest first."""
        query = sa.select(client_keys).order_by(client_keys.c.created_at, client_keys.c.id)
        return await self._fetch_keys("list", query)

    async def changed_since(self, since: datetime | None) -> builtins.list[ClientKey]:
        """Keys created or changed at or after ``since`` (all keys for ``None``), by updated_at.

        ``updated_at`` comes from the writer's clock and a transaction may commit after a later
        one, so a poller should overlap its windows by a few seconds rather than pass the exact
        time of its last poll.
        """
        query = sa.select(client_keys).order_by(client_keys.c.updated_at, client_keys.c.id)
        if since is not None:
            query = query.where(client_keys.c.updated_at >= _aware(since, "since"))
        return await self._fetch_keys("changed_since", query)

    async def count(self) -> int:
        with _store_errors("count"):
            async with self._engine.connect() as conn:
                total = await conn.scalar(sa.select(sa.func.count()).select_from(client_keys))
        return int(total or 0)

    async def revoke(self, key_id: str) -> ClientKey | None:
        """Revoke a key (idempotent: a second revoke keeps the first ``revoked_at``)."""
        now = _utcnow()
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
        """Change what is given (``expires_at=None`` clears the expiry); ``None`` if no such key."""
        values: dict[str, Any] = {"updated_at": _utcnow()}
        if name is not None:
            values["name"] = _checked_name(name)
        if policy is not None:
            values.update(_policy_row(policy))
        if not isinstance(expires_at, EllipsisType):
            values["expires_at"] = _aware(expires_at, "expires_at")
        return await self._update("update", key_id, values)

    async def record_usage(self, events: Sequence[UsageEvent]) -> None:
        """Insert a batch of usage events in one statement."""
        if not events:
            return
        rows = [_event_row(event) for event in events]
        with _store_errors("record_usage"):
            async with self._engine.begin() as conn:
                await conn.execute(usage_events.insert(), rows)

    async def usage_summary(
        self, key_id: str, since: date | None = None
    ) -> builtins.list[UsageRow]:
        """A key's usage per UTC day and model, from ``since`` (a UTC day) on."""
        with _store_errors("usage_summary"):
            async with self._engine.connect() as conn:
                day = _utc_day(conn.dialect.name, usage_events.c.created_at)
                query = (
                    sa.select(
                        day,
                        usage_events.c.model,
                        sa.func.count().label("requests"),
                        *_usage_sums(),
                    )
                    .where(usage_events.c.key_id == key_id)
                    .group_by(day, usage_events.c.model)
                    .order_by(day, usage_events.c.model)
                )
                if since is not None:
                    start = datetime.combine(since, time.min, tzinfo=UTC)
                    query = query.where(usage_events.c.created_at >= start)
                rows = (await conn.execute(query)).all()
        return [
            UsageRow(
                day=_as_date(row.day),
                model=row.model,
                requests=int(row.requests),
                prompt_tokens=int(row.prompt_tokens),
                completion_tokens=int(row.completion_tokens),
                total_tokens=int(row.total_tokens),
                cost=float(row.cost),
            )
            for row in rows
        ]

    async def usage_totals(self, key_id: str, since: datetime | None = None) -> tuple[int, float]:
        """A key's total tokens and cost (USD) since ``since``, or ever: what budgets compare to."""
        query = sa.select(
            sa.func.coalesce(sa.func.sum(usage_events.c.total_tokens), 0),
            sa.func.coalesce(sa.func.sum(usage_events.c.cost), 0.0),
        ).where(usage_events.c.key_id == key_id)
        if since is not None:
            query = query.where(usage_events.c.created_at >= _aware(since, "since"))
        with _store_errors("usage_totals"):
            async with self._engine.connect() as conn:
                tokens, cost = (await conn.execute(query)).one()
        return int(tokens), float(cost)

    async def _fetch_keys(self, operation: str, query: sa.Select[Any]) -> builtins.list[ClientKey]:
        with _store_errors(operation):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        return [_client_key(row._mapping) for row in rows]

    async def _update(
        self, operation: str, key_id: str, values: Mapping[str, Any]
    ) -> ClientKey | None:
        statement = client_keys.update().where(client_keys.c.id == key_id).values(dict(values))
        with _store_errors(operation):
            async with self._engine.begin() as conn:
                if (await conn.execute(statement)).rowcount == 0:
                    return None
                return await _fetch_key(conn, key_id)


async def migrate(database_url: str) -> None:
    """Migrate the database at ``database_url`` to the current schema (for the CLI and deploys)."""
    store = await KeyStore.open(database_url)
    try:
        await store.migrate()
    finally:
        await store.close()


@contextlib.contextmanager
def _store_errors(operation: str) -> Iterator[None]:
    """Translate the database's failures into the proxy's one store error.

    The message names the operation and the exception class only: SQLAlchemy's own message can
    carry SQL parameters, and this message may reach a client in a 503.
    """
    try:
        yield
    except (sa.exc.SQLAlchemyError, OSError, TimeoutError, CommandError) as exc:
        raise StoreUnavailable(
            f"The key store is unavailable ({operation}: {type(exc).__name__})."
        ) from exc


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None, param: str) -> datetime | None:
    # A naive datetime is ambiguous (local? UTC?); refusing it here keeps the bug with its caller.
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{param} must be a timezone-aware datetime")
    return None if value is None else value.astimezone(UTC)


def _checked_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH:
        raise InvalidRequest(
            f"Invalid value for 'name': must be 1-{MAX_NAME_LENGTH} characters.", param="name"
        )
    return name


def _policy_row(policy: KeyPolicy) -> dict[str, Any]:
    row = {name: getattr(policy, name) for name in _POLICY_COLUMNS}
    row["models"] = json.dumps(list(policy.models)) if policy.models else None
    return row


def _client_key(row: sa.RowMapping) -> ClientKey:
    models = tuple(json.loads(row["models"])) if row["models"] else ()
    policy = KeyPolicy(models=models, **{name: row[name] for name in _POLICY_COLUMNS})
    return ClientKey(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        key_hash=row["key_hash"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        policy=policy,
    )


async def _fetch_key(conn: AsyncConnection, key_id: str) -> ClientKey | None:
    row = (await conn.execute(sa.select(client_keys).where(client_keys.c.id == key_id))).first()
    return None if row is None else _client_key(row._mapping)


def _event_row(event: UsageEvent) -> dict[str, Any]:
    row = {
        "key_id": event.key_id,
        "created_at": _aware(event.created_at, "created_at"),
        "status": event.status,
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "total_tokens": event.total_tokens,
        "cost": event.cost,
        "latency_ms": event.latency_ms,
    }
    # The model name comes from the client; PostgreSQL would reject an over-long one and with it
    # the whole batch, so clip to the column widths instead.
    for name, limit in _EVENT_TEXT_LIMITS.items():
        row[name] = getattr(event, name)[:limit]
    return row


def _usage_sums() -> tuple[sa.Label[Any], ...]:
    columns = ("prompt_tokens", "completion_tokens", "total_tokens")
    sums = [sa.func.coalesce(sa.func.sum(usage_events.c[c]), 0).label(c) for c in columns]
    return (*sums, sa.func.coalesce(sa.func.sum(usage_events.c.cost), 0.0).label("cost"))


def _utc_day(dialect: str, column: sa.ColumnElement[datetime]) -> sa.Label[Any]:
    if dialect == "postgresql":
        # timezone('UTC', timestamptz) is the UTC wall time, whatever the session's TimeZone. The
        # zone is a literal, not a bind parameter, so GROUP BY matches the selected expression.
        utc = sa.func.timezone(sa.literal_column("'UTC'"), column)
        return sa.cast(utc, sa.Date).label("day")
    # SQLite stores naive UTC ISO strings (see schema.UTCDateTime); date() takes their day.
    return sa.func.date(column).label("day")


def _as_date(value: date | str) -> date:
    return date.fromisoformat(value) if isinstance(value, str) else value
