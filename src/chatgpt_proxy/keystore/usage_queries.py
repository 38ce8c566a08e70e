"""The usage queries behind ``UsageLedger``: recording events and summing them per key.

Pure statement builders; ``usage.py`` runs them at the store's error boundary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from chatgpt_proxy.keystore.schema import (
    aware_utc,
    client_keys,
    usage_day_totals,
    usage_events,
    usage_key_days,
    usage_key_weeks,
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


def daily_upserts(
    dialect: str, rows: Sequence[dict[str, Any]]
) -> list[tuple[sa.Executable, list[dict[str, Any]]]]:
    """Statements, each with its rows, that add ``rows`` (from ``event_rows``) to the sums: per
    key and day (``usage_key_days``) and week (``usage_key_weeks``), and per day, model and
    upstream key (``usage_day_totals``). Each is one statement run for many rows (an
    executemany): compiled once, where a statement of many VALUES was compiled anew for every
    write, and that compiling was most of a write's time."""
    dated = [_dated(row) for row in rows]
    return [
        _sum_upsert(dialect, usage_key_days, ("day", "key_id"), dated),
        _sum_upsert(dialect, usage_key_weeks, ("week", "key_id"), dated),
        _sum_upsert(dialect, usage_day_totals, ("day", "model", "upstream"), dated),
    ]


def week_of(day: date) -> date:
    """The Monday of ``day``'s week: what ``usage_key_weeks.week`` holds."""
    return day - timedelta(days=day.weekday())


def _dated(row: dict[str, Any]) -> dict[str, Any]:
    day = row["created_at"].astimezone(UTC).date()
    return {**row, "day": day.isoformat(), "week": week_of(day).isoformat()}


def _sum_upsert(
    dialect: str, table: sa.Table, groups: tuple[str, ...], rows: Sequence[dict[str, Any]]
) -> tuple[sa.Executable, list[dict[str, Any]]]:
    # The rows are summed per group first: one write adds to each row of sums once.
    summed: dict[tuple[str, ...], dict[str, Any]] = {}
    for row in rows:
        group = tuple(row[name] for name in groups)
        sums = summed.get(group)
        if sums is None:
            sums = summed[group] = dict(zip(groups, group, strict=True))
            sums.update(dict.fromkeys(_DAILY_SUMS, 0))
        for name in _DAILY_SUMS:
            sums[name] += row[name] or 0
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    statement = insert.on_conflict_do_update(
        index_elements=list(groups),
        set_={name: table.c[name] + insert.excluded[name] for name in _DAILY_SUMS},
    )
    return statement, list(summed.values())


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
REPORT_LIMIT = 1000
# Periods of up to this many weeks get the report by key from the keys that can be in it only
# (see _candidates); longer ones sum every key's rows.
_PRUNED_WEEKS = 60


def report_query(since: date, until: date, by: str, limit: int = REPORT_LIMIT) -> sa.Select[Any]:
    """Every key's requests, tokens and cost on the UTC days ``since`` to ``until``, included,
    per day, model, key or upstream key: one row per group, as ``group`` (a day as text),
    largest first (then by group) except days, which come in order. At most ``limit``.

    From the sums kept with every write: a few rows per day for the reports by day, model and
    upstream key; for the report by key, a row per key and week the period covers whole, and
    per key and day for the days before and after those weeks, of the keys that can be among
    the largest.
    """
    if by not in REPORT_GROUPS:
        raise ValueError(f"by must be one of {REPORT_GROUPS}")
    if by == "key":
        keys = _candidates(since, until, limit)
        return _largest(_key_rows(since, until, keys), "key_id", limit)
    rows = (
        sa.select(usage_day_totals)
        .where(usage_day_totals.c.day >= since.isoformat())
        .where(usage_day_totals.c.day <= until.isoformat())
        .subquery()
    )
    return _largest(rows, by, limit, in_order=by == "day")


def _largest(rows: sa.Subquery, by: str, limit: int, *, in_order: bool = False) -> sa.Select[Any]:
    group = rows.c[by]
    tokens = sa.func.sum(rows.c.total_tokens)
    sums = [sa.func.sum(rows.c[name]).label(name) for name in _DAILY_SUMS]
    order = [group] if in_order else [tokens.desc(), group]
    query = sa.select(group.label("group"), *sums).group_by(group)
    return query.order_by(*order).limit(limit)


def _candidates(since: date, until: date, limit: int) -> sa.Select[Any] | None:
    """The keys that can be among the ``limit`` largest, in a query; None to take every key.

    A key whose sum over the period is at least some bound L has, in one of the n weeks the
    period touches, at least L / n (its days in the period are part of those weeks). L is the
    limit-th largest sum over the period among the limit largest keys of one week: at most the
    limit-th largest among every key. So the keys with a week of at least L / n include every
    key of the report, ties included, and the report from them alone is the same. With traffic
    as it goes, a few keys make most of it: for 100,000 keys they are a few thousand. Each step
    reads an index range (usage_key_weeks by week and tokens) or a key's rows by primary key.
    """
    weeks = [week_of(since)]
    while weeks[-1] < week_of(until):
        weeks.append(weeks[-1] + timedelta(days=7))
    if len(weeks) > _PRUNED_WEEKS:
        return None
    table = usage_key_weeks
    whole = [week for week in weeks if since <= week and week + timedelta(days=6) <= until]
    seeds = (
        sa.select(table.c.key_id)
        .where(table.c.week == (whole or weeks)[-1].isoformat())
        .order_by(table.c.total_tokens.desc())
        .limit(limit)
        .cte("seeds")
    )
    seeded = _key_rows(since, until, sa.select(seeds.c.key_id))
    sums = sa.select(sa.func.sum(seeded.c.total_tokens).label("tokens"))
    sums_by_key = sums.group_by(seeded.c.key_id).subquery()
    bound = (
        sa.select(sums_by_key.c.tokens)
        .order_by(sums_by_key.c.tokens.desc())
        .offset(limit - 1)
        .limit(1)
        .scalar_subquery()
    )
    # ceil(L / n) in integers. Fewer than ``limit`` seeds with usage: no bound, every key.
    least = (sa.func.coalesce(sa.cast(bound, sa.BigInteger), 0) + len(weeks) - 1) // len(weeks)
    candidates = (
        sa.select(table.c.key_id)
        .where(table.c.week.in_([week.isoformat() for week in weeks]))
        .where(table.c.total_tokens >= least)
        .cte("candidates")
    )
    return sa.select(candidates.c.key_id)


def _key_rows(since: date, until: date, keys: sa.Select[Any] | None) -> sa.Subquery:
    """The per-key rows that add up to ``since`` to ``until``: the weeks in it whole, the days
    in it outside those weeks; those of ``keys`` only (each read by its primary key), or of
    every key."""
    first = week_of(since + timedelta(days=6))  # the first Monday on or after since
    last = week_of(until + timedelta(days=1)) - timedelta(days=7)  # the last ending by until
    if first > last:  # no whole week
        parts = [_rows(usage_key_days, "day", since, until, keys)]
    else:
        parts = [_rows(usage_key_weeks, "week", first, last, keys, step=7)]
        if since < first:
            parts.append(_rows(usage_key_days, "day", since, first - timedelta(days=1), keys))
        if last + timedelta(days=6) < until:
            parts.append(_rows(usage_key_days, "day", last + timedelta(days=7), until, keys))
    return sa.union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()


def _rows(
    table: sa.Table,
    period: str,
    first: date,
    last: date,
    keys: sa.Select[Any] | None,
    *,
    step: int = 1,
) -> sa.Select[Any]:
    query = sa.select(*(table.c[name] for name in ("key_id", *_DAILY_SUMS)))
    if keys is None:
        return query.where(table.c[period] >= first.isoformat()).where(
            table.c[period] <= last.isoformat()
        )
    # Each period named, so that the database looks each key up in each period by the primary
    # key (period, key_id) instead of reading every key's rows of the range.
    periods = [
        (first + timedelta(days=n)).isoformat() for n in range(0, (last - first).days + 1, step)
    ]
    return query.where(table.c[period].in_(periods), table.c.key_id.in_(keys))


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
