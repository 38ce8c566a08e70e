"""The usage queries behind ``UsageLedger``: recording events and summing them per key.

Pure statement builders; ``usage.py`` runs them at the store's error boundary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from chatgpt_proxy.keystore.schema import (
    aware_utc,
    client_keys,
    usage_day_totals,
    usage_events,
    usage_key_days,
)
from chatgpt_proxy.keystore.text import storable
from chatgpt_proxy.keystore.values import UsageEvent, UsageRow

# The model name comes from the client; PostgreSQL would refuse an over-long one, or one with a
# NUL, and with it the whole batch, so text is made storable and clipped to the column widths.
_TEXT_LIMITS = {"key_id": 32, "model": 200, "upstream": 100, "endpoint": 100}
_TOKEN_COLUMNS = ("prompt_tokens", "completion_tokens", "total_tokens")
# The counters are INTEGER columns (32 bits on PostgreSQL). A sum past that (an upstream that
# reports absurd usage, a long outage summing latency) is kept at the largest value the column
# holds: a row that says "at least this much" rather than a row refused.
_SUMMED_COLUMNS = ("requests", *_TOKEN_COLUMNS, "latency_ms")
_INT32_MAX = 2**31 - 1


def event_rows(events: Sequence[UsageEvent]) -> list[dict[str, Any]]:
    """Insert parameters for ``events``, one dict each, for a single executemany."""
    return [_event_row(event) for event in events]


def _event_row(event: UsageEvent) -> dict[str, Any]:
    cost = event.cost
    row: dict[str, Any] = {
        "created_at": aware_utc(event.created_at, "created_at"),
        "status": min(max(event.status, 0), _INT32_MAX),
        # NaN is a value SQLite stores as NULL and PostgreSQL as NaN, which then poisons sums.
        "cost": cost if cost is None or math.isfinite(cost) else None,
    }
    for name in _SUMMED_COLUMNS:
        row[name] = min(max(getattr(event, name), 0), _INT32_MAX)
    for name, limit in _TEXT_LIMITS.items():
        row[name] = storable(getattr(event, name), limit)
    return row


_DAILY_SUMS = ("requests", *_TOKEN_COLUMNS, "cost")
_DAILY_BATCH = 500  # rows per statement: well under SQLite's limit of bound parameters


def daily_upserts(dialect: str, rows: Sequence[dict[str, Any]]) -> list[sa.Executable]:
    """Statements that add ``rows`` (from ``event_rows``) to the per-day sums: per key
    (``usage_key_days``) and per model and upstream key (``usage_day_totals``)."""
    statements = _sum_upserts(dialect, usage_key_days, ("day", "key_id"), rows)
    return statements + _sum_upserts(dialect, usage_day_totals, ("day", "model", "upstream"), rows)


def _sum_upserts(
    dialect: str, table: sa.Table, groups: tuple[str, ...], rows: Sequence[dict[str, Any]]
) -> list[sa.Executable]:
    # The rows are summed per group first: one statement may not touch a row twice.
    summed: dict[tuple[str, ...], dict[str, Any]] = {}
    for row in rows:
        day = row["created_at"].astimezone(UTC).date().isoformat()
        group = tuple(day if name == "day" else row[name] for name in groups)
        sums = summed.get(group)
        if sums is None:
            sums = summed[group] = dict(zip(groups, group, strict=True))
            sums.update(dict.fromkeys(_DAILY_SUMS, 0))
        for name in _DAILY_SUMS:
            sums[name] += row[name] or 0
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    values = list(summed.values())
    statements: list[sa.Executable] = []
    for start in range(0, len(values), _DAILY_BATCH):
        statement = insert(table).values(values[start : start + _DAILY_BATCH])
        statements.append(
            statement.on_conflict_do_update(
                index_elements=list(groups),
                set_={name: table.c[name] + statement.excluded[name] for name in _DAILY_SUMS},
            )
        )
    return statements


def summary_query(dialect: str, key_id: str, since: date | None) -> sa.Select[Any]:
    """A key's requests, tokens and cost per UTC day and model, ordered by day then model."""
    day = _utc_day(dialect, usage_events.c.created_at)
    sums = [sa.func.coalesce(sa.func.sum(usage_events.c[c]), 0).label(c) for c in _TOKEN_COLUMNS]
    query = (
        sa.select(
            day,
            usage_events.c.model,
            sa.func.sum(usage_events.c.requests).label("requests"),
            *sums,
            sa.func.coalesce(sa.func.sum(usage_events.c.cost), 0.0).label("cost"),
        )
        .where(usage_events.c.key_id == key_id)
        .group_by(day, usage_events.c.model)
        .order_by(day, usage_events.c.model)
    )
    if since is not None:
        start = datetime.combine(since, time.min, tzinfo=UTC)
        query = query.where(usage_events.c.created_at >= start)
    return query


def summary_rows(rows: Sequence[sa.Row[Any]]) -> list[UsageRow]:
    return [
        UsageRow(
            day=_as_date(row.day),
            model=row.model,
            requests=int(row.requests),
            prompt_tokens=int(row.prompt_tokens),
            completion_tokens=int(row.completion_tokens),
            total_tokens=int(row.total_tokens),
            cost=float(row.cost),  # NULL costs (unknown prices) count as zero
        )
        for row in rows
    ]


def totals_query(key_id: str, since: datetime | None) -> sa.Select[Any]:
    """A key's total tokens and cost since ``since`` (or ever): what budgets are checked against."""
    query = sa.select(
        sa.func.coalesce(sa.func.sum(usage_events.c.total_tokens), 0),
        sa.func.coalesce(sa.func.sum(usage_events.c.cost), 0.0),
    ).where(usage_events.c.key_id == key_id)
    if since is not None:
        query = query.where(usage_events.c.created_at >= aware_utc(since, "since"))
    return query


REPORT_GROUPS = ("day", "model", "key", "upstream")


def report_query(since: date, until: date, by: str) -> sa.Select[Any]:
    """Every key's requests, tokens and cost on the UTC days ``since`` to ``until`` included,
    per day, model, key or upstream key: one row per group, as ``group`` (a day as text),
    largest first except days, which come in order. At most 1000 groups.

    From the per-day sums: one row per key and day for the report by key, a few rows per day
    for the others, however many requests they stand for.
    """
    if by not in REPORT_GROUPS:
        raise ValueError(f"by must be one of {REPORT_GROUPS}")
    table = usage_key_days if by == "key" else usage_day_totals
    group = table.c["key_id" if by == "key" else by]
    tokens = sa.func.sum(table.c.total_tokens)
    query = (
        sa.select(
            group.label("group"),
            sa.func.sum(table.c.requests).label("requests"),
            sa.func.sum(table.c.prompt_tokens).label("prompt_tokens"),
            sa.func.sum(table.c.completion_tokens).label("completion_tokens"),
            tokens.label("total_tokens"),
            sa.func.sum(table.c.cost).label("cost"),
        )
        .where(table.c.day >= since.isoformat())
        .where(table.c.day <= until.isoformat())
        .group_by(group)
    )
    return query.order_by(group if by == "day" else tokens.desc()).limit(1000)


def minutes_query(dialect: str, since: datetime) -> sa.Select[Any]:
    """Every key's requests, failed requests, tokens and latency per UTC minute since ``since``."""
    column = usage_events.c.created_at
    if dialect == "postgresql":
        utc = sa.func.timezone(sa.literal_column("'UTC'"), column)
        minute: sa.ColumnElement[Any] = sa.func.to_char(
            utc, sa.literal_column("'YYYY-MM-DD\"T\"HH24:MI'")
        )
    else:
        minute = sa.func.strftime(sa.literal_column("'%Y-%m-%dT%H:%M'"), column)
    failed = sa.case((usage_events.c.status >= 400, usage_events.c.requests), else_=0)
    return (
        sa.select(
            minute.label("minute"),
            sa.func.sum(usage_events.c.requests).label("requests"),
            sa.func.sum(failed).label("errors"),
            sa.func.sum(usage_events.c.total_tokens).label("tokens"),
            sa.func.sum(usage_events.c.latency_ms).label("latency_ms"),
        )
        .where(column >= aware_utc(since, "since"))
        .group_by(minute)
        .order_by(minute)
    )


def key_search(search: str) -> sa.ColumnElement[bool]:
    """Keys whose name contains ``search`` or whose prefix starts with it (any key for "")."""
    if not search:
        return sa.true()
    # The text is a pattern's literal part: LIKE's wildcards in it match themselves.
    literal = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    name = sa.func.lower(client_keys.c.name).like(f"%{literal.lower()}%", escape="\\")
    return sa.or_(name, client_keys.c.prefix.like(f"{literal}%", escape="\\"))


def _utc_day(dialect: str, column: sa.ColumnElement[datetime]) -> sa.Label[Any]:
    if dialect == "postgresql":
        # timezone('UTC', timestamptz) is the UTC wall time whatever the session's TimeZone. The
        # zone is a literal, not a bind parameter, so GROUP BY matches the selected expression.
        utc = sa.func.timezone(sa.literal_column("'UTC'"), column)
        return sa.cast(utc, sa.Date).label("day")
    # SQLite holds naive UTC ISO strings (see schema.UTCDateTime); date() takes their day.
    return sa.func.date(column).label("day")


def _as_date(value: date | str) -> date:
    # PostgreSQL returns a date, SQLite date()'s text.
    return date.fromisoformat(value) if isinstance(value, str) else value
