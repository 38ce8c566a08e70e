"""The usage ledger: every metered request, its per-day sums, and the reports read from them.

The statements are in ``usage_queries.py``; this runs them at the store's error boundary::

    refused = await store.usage.record([UsageEvent(key.id, "gpt-4o", "openai#1", ...)])
    tokens, cost = await store.usage.totals(key.id)      # what budgets compare to
    rows = await store.usage.summary(key.id, since=date(2026, 3, 1))
    report = await store.usage.report(since, until, by="model")
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chatgpt_proxy.keystore import usage_queries
from chatgpt_proxy.keystore.audit import StoreErrors
from chatgpt_proxy.keystore.key_rows import possible_id
from chatgpt_proxy.keystore.schema import usage_events
from chatgpt_proxy.keystore.values import UsageEvent, UsageRow

# What a statement can fail with because of the values it was given: the database's verdicts,
# and the drivers' own errors for a value they cannot send (SQLAlchemy passes those on as they
# are when the driver raises them, or wraps them in a plain StatementError while binding).
_ROW_FAILURES = (sa.exc.StatementError, ValueError, ArithmeticError)


class UsageLedger:
    """The ``usage_events`` table and its per-day sums; database failures raise
    ``StoreUnavailable``."""

    def __init__(self, engine: AsyncEngine, errors: StoreErrors) -> None:
        self._engine = engine
        self._errors = errors

    async def record(self, events: Sequence[UsageEvent]) -> list[UsageEvent]:
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
        with self._errors("record_usage"):
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

    async def summary(self, key_id: str, since: date | None = None) -> list[UsageRow]:
        """A key's usage per UTC day and model, from the UTC day ``since`` on."""
        if not possible_id(key_id):
            return []
        with self._errors("usage_summary"):
            async with self._engine.connect() as conn:
                query = usage_queries.summary_query(conn.dialect.name, key_id, since)
                rows = (await conn.execute(query)).all()
        return usage_queries.summary_rows(rows)

    async def totals(self, key_id: str, since: datetime | None = None) -> tuple[int, float]:
        """A key's total tokens and cost (USD) since ``since``, or ever: what budgets compare to."""
        if not possible_id(key_id):
            return 0, 0.0
        query = usage_queries.totals_query(key_id, since)
        with self._errors("usage_totals"):
            async with self._engine.connect() as conn:
                tokens, cost = (await conn.execute(query)).one()
        return int(tokens), float(cost)

    async def report(self, since: date, until: date, by: str) -> list[dict[str, Any]]:
        """Requests, tokens and cost of every key on the UTC days ``since`` to ``until``,
        grouped ``by`` one of ``usage_queries.REPORT_GROUPS`` (day, model, key, upstream)."""
        with self._errors("usage_report"):
            async with self._engine.connect() as conn:
                if by == "key" and conn.dialect.name == "postgresql":
                    # Summing a month per key holds ~50 MB of sums for 100,000 keys: within the
                    # default work_mem (4 MB) they spill to disk, a third of the time. For this
                    # transaction only.
                    await conn.execute(sa.text("SET LOCAL work_mem = '64MB'"))
                rows = (await conn.execute(usage_queries.report_query(since, until, by))).all()
        return [dict(row._mapping) for row in rows]

    async def by_minute(self, since: datetime) -> list[dict[str, Any]]:
        """Every key's requests, errors, tokens and latency per UTC minute (the overview's)."""
        with self._errors("usage_by_minute"):
            async with self._engine.connect() as conn:
                query = usage_queries.minutes_query(conn.dialect.name, since)
                rows = (await conn.execute(query)).all()
        return [dict(row._mapping) for row in rows]


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


async def _add_daily(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Add the rows just written to usage_events to the per-day sums, in the same transaction."""
    for statement, sums in usage_queries.daily_upserts(conn.dialect.name, rows):
        await conn.execute(statement, sums)
