"""The database engine behind the key store: which URLs it accepts and how it connects.

Operators write plain URLs (``sqlite:///./chatgpt-proxy.db``, ``postgresql://user@host/db``);
the store needs SQLAlchemy's async drivers, so the URL is mapped here, once.
"""

from __future__ import annotations

import contextlib
import importlib
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from chatgpt_proxy.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 5_000
POSTGRES_CONNECT_TIMEOUT_S = 5.0

_POSTGRES_SCHEMES = ("postgresql", "postgres")
_MISSING_ASYNCPG = (
    "database_url is PostgreSQL but asyncpg is missing: pip install 'chatgpt-proxy[postgres]'"
)


def async_database_url(database_url: str) -> sa.URL:
    """Map an operator's URL to its async driver, or raise ``ConfigError``.

    >>> async_database_url("postgres://app@db/keys").drivername
    'postgresql+asyncpg'
    """
    try:
        url = sa.make_url(database_url)
    except sa.exc.ArgumentError as exc:
        # The URL may hold a password: name the problem, not the value.
        raise ConfigError("database_url is not a valid database URL") from exc
    backend, _, driver = url.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "aiosqlite"):
        return url.set(drivername="sqlite+aiosqlite")
    if backend in _POSTGRES_SCHEMES and driver in ("", "asyncpg"):
        try:
            importlib.import_module("asyncpg")  # the dialect would import it anyway, later
        except ImportError as exc:
            raise ConfigError(_MISSING_ASYNCPG) from exc
        return url.set(drivername="postgresql+asyncpg")
    raise ConfigError(
        f"database_url scheme {url.drivername!r} is not supported: "
        "use sqlite:///PATH or postgresql://USER@HOST/DATABASE"
    )


def create_engine(database_url: str) -> AsyncEngine:
    """An async engine for ``database_url``; nothing connects until the first query."""
    url = async_database_url(database_url)
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(url)
        _configure_sqlite(engine)
        return engine
    return create_async_engine(
        url,
        # A database restart must not leave the pool full of dead connections.
        pool_pre_ping=True,
        connect_args={"timeout": POSTGRES_CONNECT_TIMEOUT_S},
    )


@contextlib.asynccontextmanager
async def exclusive(engine: AsyncEngine, lock: int) -> AsyncIterator[AsyncConnection]:
    """A transaction that no other holder of ``lock``, in any process, runs beside.

    For work that reads then writes and must happen once however many replicas start together
    (migrating, creating the first key). On PostgreSQL ``lock`` names a transaction-scoped
    advisory lock, released by the commit or rollback even if the process dies; SQLite has one
    write lock per file, taken up front (``BEGIN IMMEDIATE``), so there ``lock`` is not needed.
    """
    async with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            await conn.execution_options(sqlite_begin="BEGIN IMMEDIATE")
        async with conn.begin():
            if conn.dialect.name == "postgresql":
                await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": lock})
            yield conn


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL once; it stays so for every later connection.

    The switch needs the file to itself, and SQLite refuses it at once ("database is locked")
    rather than wait when another connection opens a new file at that moment (replicas or the
    CLI starting together): retry within the busy timeout. The driver runs this in its own
    thread, so the sleep never blocks the event loop.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode")
            if cursor.fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _configure_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @sa.event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own implicit BEGIN skips DDL and cannot be made IMMEDIATE; turn it off and
        # let SQLAlchemy's "begin" event below start every transaction.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL lets the server read while the CLI writes; busy_timeout makes a writer wait for
        # the other's lock instead of failing at once with "database is locked".
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")
        _use_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")  # as PostgreSQL enforces them
        cursor.close()

    @sa.event.listens_for(sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # "BEGIN IMMEDIATE" for migrations (see migrator.py); a deferred BEGIN otherwise.
        conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN"))
