"""The key store: client keys, their usage and the owners of stored objects, durable in SQLite or
PostgreSQL.

Every database failure is translated here, at the one boundary, into ``StoreUnavailable``.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import json
import secrets
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from types import EllipsisType, TracebackType
from typing import Any

import sqlalchemy as sa
from alembic.util import CommandError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatgpt_proxy.errors import InvalidRequest, StoreUnavailable
from chatgpt_proxy.keystore import migrator, objects, owners, usage_queries
from chatgpt_proxy.keystore.audit import AuditLog
from chatgpt_proxy.keystore.engine import create_engine, exclusive
from chatgpt_proxy.keystore.objects import StoredObject
from chatgpt_proxy.keystore.owners import Issue, Outcome
from chatgpt_proxy.keystore.schema import aware_utc, client_keys, usage_events
from chatgpt_proxy.keystore.sessions import ConsoleSessions
from chatgpt_proxy.keystore.text import is_storable
from chatgpt_proxy.keystore.tokens import display_prefix, hash_secret, new_secret
from chatgpt_proxy.keystore.values import ClientKey, KeyPolicy, UsageEvent, UsageRow

MAX_NAME_LENGTH = 200
MAX_ID_LENGTH = 32  # the client_keys.id column
# Any fixed 64-bit number, the same in every replica: it names the lock, nothing more.
_FIRST_KEY_LOCK = 0x6367705F66697273  # b"cgp_firs"
SORTABLE = ("created_at", "updated_at", "name", "prefix", "expires_at")
_POLICY_COLUMNS = tuple(name for name in KeyPolicy.field_names() if name != "models")


class KeyStore:
    """Client keys and their usage.

    >>> store = await KeyStore.open("sqlite:///./chatgpt-proxy.db")  # or postgresql://...
    >>> await store.migrate()                  # on every start: cheap when current
    >>> key, secret = await store.create("ci", KeyPolicy(rpm=60, models=("gpt-4o*",)))
    >>> secret                                 # shown once; only its hash is stored
    'pk-...'
    >>> await store.record_usage([UsageEvent(key.id, "gpt-4o", "openai#1", ...)])
    >>> await store.usage_totals(key.id)
    (15, 0.25)
    >>> await store.revoke(key.id)
    >>> await store.close()                    # or: async with await KeyStore.open(url) as store
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
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
        key, secret, row = _new_key(name, policy, expires_at, owner)
        with _store_errors("create"):
            async with self._engine.begin() as conn:
                await conn.execute(client_keys.insert().values(row))
        return key, secret

    async def create_if_empty(self, name: str, policy: KeyPolicy) -> tuple[ClientKey, str] | None:
        """Create a key only if there is none yet (a first start's key); ``None`` if there was.

        Once, however many replicas start together: they take turns, and only the first finds
        the table empty.
        """
        key, secret, row = _new_key(name, policy, None, None)
        with _store_errors("create_if_empty"):
            async with exclusive(self._engine, _FIRST_KEY_LOCK) as conn:
                if await conn.scalar(sa.select(client_keys.c.id).limit(1)) is not None:
                    return None
                await conn.execute(client_keys.insert().values(row))
        return key, secret

    async def get(self, key_id: str) -> ClientKey | None:
        if not _possible_id(key_id):
            return None
        with _store_errors("get"):
            async with self._engine.connect() as conn:
                return await _fetch_key(conn, key_id)

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

    async def usage_report(
        self, since: date, until: date, by: str
    ) -> builtins.list[dict[str, Any]]:
        """Requests, tokens and cost of every key on the UTC days ``since`` to ``until``,
        grouped ``by`` one of ``usage_queries.REPORT_GROUPS`` (day, model, key, upstream)."""
        with _store_errors("usage_report"):
            async with self._engine.connect() as conn:
                if by == "key" and conn.dialect.name == "postgresql":
                    # Summing a month per key holds ~50 MB of sums for 100,000 keys: within the
                    # default work_mem (4 MB) they spill to disk, a third of the time. For this
                    # transaction only.
                    await conn.execute(sa.text("SET LOCAL work_mem = '64MB'"))
                rows = (await conn.execute(usage_queries.report_query(since, until, by))).all()
        return [dict(row._mapping) for row in rows]

    async def usage_by_minute(self, since: datetime) -> builtins.list[dict[str, Any]]:
        """Every key's requests, errors, tokens and latency per UTC minute (the overview's)."""
        with _store_errors("usage_by_minute"):
            async with self._engine.connect() as conn:
                query = usage_queries.minutes_query(conn.dialect.name, since)
                rows = (await conn.execute(query)).all()
        return [dict(row._mapping) for row in rows]

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
            values["name"] = _checked_name(name)
        if policy is not None:
            values.update(_policy_row(policy))
        if expires_at is None:
            values["expires_at"] = None
        elif isinstance(expires_at, datetime):
            values["expires_at"] = aware_utc(expires_at, "expires_at")
        return await self._update("update", key_id, values)

    async def record_usage(self, events: Sequence[UsageEvent]) -> builtins.list[UsageEvent]:
        """Insert a batch of usage events; return those the database refused (none are written).

        The batch is one statement (an executemany). If the database refuses it for what a row
        holds (a key id it does not know, a value it cannot store), each row is tried again on
        its own, in a savepoint of one transaction, so one bad row never holds back the others:
        the rows refused again are returned, and everything else is written. A database that
        cannot be reached raises ``StoreUnavailable``, and then nothing is written.
        """
        if not events:
            return []
        rows = usage_queries.event_rows(events)
        with _store_errors("record_usage"):
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(usage_events.insert(), rows)
                    await _add_daily(conn, rows)
            except _ROW_FAILURES as exc:
                if not _refused_for_its_data(exc):
                    raise
            else:
                return []
            refused = []
            async with self._engine.begin() as conn:
                for event, row in zip(events, rows, strict=True):
                    try:
                        async with conn.begin_nested():
                            await conn.execute(usage_events.insert(), row)
                            await _add_daily(conn, [row])
                    except _ROW_FAILURES as exc:
                        if not _refused_for_its_data(exc):
                            raise
                        refused.append(event)
            return refused

    async def usage_summary(
        self, key_id: str, since: date | None = None
    ) -> builtins.list[UsageRow]:
        """A key's usage per UTC day and model, from the UTC day ``since`` on."""
        if not _possible_id(key_id):
            return []
        with _store_errors("usage_summary"):
            async with self._engine.connect() as conn:
                query = usage_queries.summary_query(conn.dialect.name, key_id, since)
                rows = (await conn.execute(query)).all()
        return usage_queries.summary_rows(rows)

    async def usage_totals(self, key_id: str, since: datetime | None = None) -> tuple[int, float]:
        """A key's total tokens and cost (USD) since ``since``, or ever: what budgets compare to."""
        if not _possible_id(key_id):
            return 0, 0.0
        query = usage_queries.totals_query(key_id, since)
        with _store_errors("usage_totals"):
            async with self._engine.connect() as conn:
                tokens, cost = (await conn.execute(query)).one()
        return int(tokens), float(cost)

    async def record_object(self, stored: StoredObject, *, if_absent: bool = False) -> None:
        """Record who owns a stored upstream object (see ``objects.py``); with ``if_absent``,
        a record of that id already there (written by any replica) is kept as it is."""
        with _store_errors("record_object"):
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(objects.insert_statement(stored))
            except sa.exc.IntegrityError:
                if not if_absent:
                    raise

    async def forget_object(self, kind: str, object_id: str) -> None:
        with _store_errors("forget_object"):
            async with self._engine.begin() as conn:
                await conn.execute(objects.delete_statement(kind, object_id))

    async def settle_object(self, kind: str, object_id: str) -> bool:
        """Mark a stored object's usage metered; True only for the call that did."""
        statement = objects.settle_statement(kind, object_id, datetime.now(UTC))
        with _store_errors("settle_object"):
            async with self._engine.begin() as conn:
                return (await conn.execute(statement)).rowcount == 1

    async def latest_object(self, owner: str, but: str) -> StoredObject | None:
        """``owner``'s latest stored object of any kind but ``but``."""
        with _store_errors("latest_object"):
            async with self._engine.connect() as conn:
                row = (await conn.execute(objects.latest_query(owner, but))).first()
        return None if row is None else objects.from_row(row._mapping)

    async def page_objects(
        self, owner: str, kind: str, after: str | None, limit: int, ascending: bool
    ) -> builtins.list[StoredObject] | None:
        """A page of ``owner``'s records of ``kind`` (see ``ObjectOwners.page``)."""
        with _store_errors("page_objects"):
            async with self._engine.connect() as conn:
                anchor = None
                if after is not None:
                    found = (await conn.execute(objects.anchor_query(owner, kind, after))).first()
                    if found is None:
                        return None
                    anchor = (found.created_at, found.object_id)
                query = objects.page_query(owner, kind, anchor, limit, ascending)
                rows = (await conn.execute(query)).all()
        return [objects.from_row(row._mapping) for row in rows]

    async def find_object(self, kind: str, object_id: str) -> StoredObject | None:
        with _store_errors("find_object"):
            async with self._engine.connect() as conn:
                row = (await conn.execute(objects.find_query(kind, object_id))).first()
        return None if row is None else objects.from_row(row._mapping)

    async def issue_owned(
        self,
        owner: str,
        name: str,
        policy: KeyPolicy,
        expires_at: datetime | None,
        *,
        rotate: bool = False,
        hourly_cap: int | None = None,
        daily_cap: int | None = None,
    ) -> Issue:
        """A key for ``owner`` unless one is active (``rotate`` revokes it first), the owner is
        blocked, ``owner`` was issued ``daily_cap`` keys in the last 24 hours, or
        ``hourly_cap`` self-service keys were issued in the last hour, to anyone.

        Read and write are one exclusive transaction: concurrent requests of one owner, on any
        replica, issue one key between them.
        """
        _checked_owner(owner)
        key, secret, row = _new_key(name, policy, expires_at, owner)
        now = key.created_at
        with _store_errors("issue_owned"):
            async with exclusive(self._engine, owners.OWNERS_LOCK) as conn:
                if await conn.scalar(owners.blocked_query(owner)) is not None:
                    return Issue(Outcome.BLOCKED)
                active = (await conn.execute(owners.active_query(owner, now))).first()
                if active is not None and not rotate:
                    return Issue(Outcome.EXISTS, _client_key(active._mapping))
                if daily_cap is not None:
                    since = now - timedelta(days=1)
                    if await conn.scalar(owners.issued_since_query(since, owner)) >= daily_cap:
                        return Issue(Outcome.USER_CAPPED)
                if hourly_cap is not None:
                    since = now - timedelta(hours=1)
                    if await conn.scalar(owners.issued_since_query(since)) >= hourly_cap:
                        return Issue(Outcome.CAPPED)
                revoked = await self._revoke_owned(conn, owner, now)
                await conn.execute(client_keys.insert().values(row))
        return Issue(Outcome.ISSUED, key, secret, revoked)

    async def owned_keys(self, owner: str) -> builtins.list[ClientKey]:
        """Every key ever issued to ``owner``, newest first."""
        if not is_storable(owner, owners.MAX_OWNER_LENGTH):
            return []
        return await self._fetch_keys("owned_keys", owners.owned_query(owner))

    async def block_owner(self, owner: str) -> tuple[ClientKey, ...]:
        """Block ``owner`` from self-service and revoke their keys; return the keys revoked."""
        _checked_owner(owner)
        now = datetime.now(UTC)
        with _store_errors("block_owner"):
            async with exclusive(self._engine, owners.OWNERS_LOCK) as conn:
                if await conn.scalar(owners.blocked_query(owner)) is None:
                    await conn.execute(owners.block_statement(owner, now))
                return await self._revoke_owned(conn, owner, now)

    async def unblock_owner(self, owner: str) -> bool:
        """Lift a block (revoked keys stay revoked); False if ``owner`` was not blocked."""
        _checked_owner(owner)
        with _store_errors("unblock_owner"):
            async with self._engine.begin() as conn:
                return bool((await conn.execute(owners.unblock_statement(owner))).rowcount)

    async def is_blocked(self, owner: str) -> bool:
        if not is_storable(owner, owners.MAX_OWNER_LENGTH):
            return False
        with _store_errors("is_blocked"):
            async with self._engine.connect() as conn:
                return await conn.scalar(owners.blocked_query(owner)) is not None

    async def first_sighting(self, interaction_id: str, window: timedelta) -> bool:
        """Remember ``interaction_id``; False if it was seen within ``window`` (a replay).

        Ids older than ``window`` are forgotten, so the table stays bounded; the caller refuses
        anything older than the window before asking.
        """
        if not is_storable(interaction_id, owners.MAX_INTERACTION_ID_LENGTH):
            return False
        now = datetime.now(UTC)
        with _store_errors("first_sighting"):
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(owners.prune_seen(now, window))
                    await conn.execute(owners.seen_statement(interaction_id, now))
            except sa.exc.IntegrityError:
                return False
        return True

    async def start_session(self, id_hash: str, key_id: str, expires_at: datetime) -> None:
        """Record a key holder's page session (by the hash of its id); expired ones go."""
        with _store_errors("start_session"):
            async with self._engine.begin() as conn:
                await conn.execute(owners.prune_sessions(datetime.now(UTC)))
                await conn.execute(owners.session_statement(id_hash, key_id, expires_at))

    async def session_key(self, id_hash: str) -> ClientKey | None:
        """The key of an unexpired session, or None."""
        with _store_errors("session_key"):
            async with self._engine.connect() as conn:
                key_id = await conn.scalar(owners.session_query(id_hash, datetime.now(UTC)))
                return None if key_id is None else await _fetch_key(conn, key_id)

    async def end_session(self, id_hash: str) -> None:
        with _store_errors("end_session"):
            async with self._engine.begin() as conn:
                await conn.execute(owners.end_session(id_hash))

    async def _revoke_owned(
        self, conn: AsyncConnection, owner: str, now: datetime
    ) -> tuple[ClientKey, ...]:
        rows = (await conn.execute(owners.owned_query(owner))).all()
        live = [_client_key(row._mapping) for row in rows]
        await conn.execute(owners.revoke_owned(owner, now))
        return tuple(
            dataclasses.replace(key, revoked_at=now, updated_at=now)
            for key in live
            if key.revoked_at is None
        )

    async def _fetch_keys(self, operation: str, query: sa.Select[Any]) -> builtins.list[ClientKey]:
        with _store_errors(operation):
            async with self._engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        return [_client_key(row._mapping) for row in rows]

    async def _update(
        self, operation: str, key_id: str, values: Mapping[str, Any]
    ) -> ClientKey | None:
        if not _possible_id(key_id):
            return None
        statement = client_keys.update().where(client_keys.c.id == key_id).values(dict(values))
        with _store_errors(operation):
            async with self._engine.begin() as conn:
                if (await conn.execute(statement)).rowcount == 0:
                    return None
                return await _fetch_key(conn, key_id)


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


def _new_key(
    name: str, policy: KeyPolicy, expires_at: datetime | None, owner: str | None
) -> tuple[ClientKey, str, dict[str, Any]]:
    """A new key, its secret and its row, checked before any SQL runs."""
    secret = new_secret()
    now = datetime.now(UTC)
    key = ClientKey(
        id="key_" + secrets.token_hex(8),
        name=_checked_name(name),
        prefix=display_prefix(secret),
        key_hash=hash_secret(secret),
        created_at=now,
        updated_at=now,
        expires_at=None if expires_at is None else aware_utc(expires_at, "expires_at"),
        revoked_at=None,
        policy=policy,
        owner=owner,
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
        "owner": owner,
        **_policy_row(policy),
    }
    return key, secret, row


# What a statement can fail with because of the values it was given: the database's verdicts,
# and the drivers' own errors for a value they cannot send (SQLAlchemy passes those on as they
# are when the driver raises them, or wraps them in a plain StatementError while binding).
_ROW_FAILURES = (sa.exc.StatementError, ValueError, ArithmeticError)


def _refused_for_its_data(exc: Exception) -> bool:
    """Whether a statement was refused for the values it was given, not for the database's state.

    Such a failure follows the row, and another row would pass; any other (a lost connection,
    a missing table, a timeout) is the database's, and every row would fail alike.
    """
    if isinstance(exc, sa.exc.IntegrityError | sa.exc.DataError):
        return True
    if not isinstance(exc, sa.exc.StatementError):
        return True  # the driver's own ValueError or ArithmeticError, passed on as it is
    cause = exc.orig
    # asyncpg's adapter reports the server's verdicts as a generic error that carries their
    # SQLSTATE (class 22: data exception, 23: integrity), and chains the driver's own error: a
    # ValueError when the value could not even be encoded.
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None) or ""
    if str(sqlstate)[:2] in ("22", "23"):
        return True
    driver_error = cause.__cause__ if cause is not None else None
    return any(isinstance(e, ValueError | ArithmeticError) for e in (cause, driver_error))


def _checked_name(name: str) -> str:
    # Checked here, not left to the column: PostgreSQL would refuse an over-long name with a
    # database error (a 503), SQLite would store it; either way the client deserves a 400.
    name = name.strip()
    if not name or not is_storable(name, MAX_NAME_LENGTH):
        raise InvalidRequest(
            f"Invalid value for 'name': must be 1-{MAX_NAME_LENGTH} characters, "
            "without NUL or unpaired surrogates.",
            param="name",
        )
    return name


def _checked_owner(owner: str) -> None:
    if not owner or not is_storable(owner, owners.MAX_OWNER_LENGTH):
        raise InvalidRequest(
            f"Invalid owner: must be 1-{owners.MAX_OWNER_LENGTH} characters.", param="owner"
        )


def _possible_id(key_id: str) -> bool:
    # An id no row can hold (NUL, a lone surrogate, longer than the column) matches no key;
    # asked of PostgreSQL it would fail the statement, and the client would see a 503.
    return is_storable(key_id, MAX_ID_LENGTH)


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
        owner=row["owner"],
    )


async def _add_daily(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Add the rows just written to usage_events to the per-day sums, in the same transaction."""
    for statement, sums in usage_queries.daily_upserts(conn.dialect.name, rows):
        await conn.execute(statement, sums)


async def _fetch_key(conn: AsyncConnection, key_id: str) -> ClientKey | None:
    row = (await conn.execute(sa.select(client_keys).where(client_keys.c.id == key_id))).first()
    return None if row is None else _client_key(row._mapping)
