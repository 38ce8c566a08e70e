"""Usage summed per day and key, and per day, model and upstream key, in place of usage_daily
(per day, key, model and upstream key), so that month-wide reports read fewer rows.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SUMS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost")


def _sum_columns() -> list[sa.Column[int] | sa.Column[float]]:
    counters: list[sa.Column[int] | sa.Column[float]] = [
        sa.Column(name, sa.BigInteger(), nullable=False) for name in _SUMS[:-1]
    ]
    return [*counters, sa.Column("cost", sa.Float(), nullable=False)]


def upgrade() -> None:
    op.create_table(
        "usage_key_days",
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        *_sum_columns(),
        sa.PrimaryKeyConstraint("day", "key_id", name="pk_usage_key_days"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "usage_day_totals",
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("upstream", sa.String(100), nullable=False),
        *_sum_columns(),
        sa.PrimaryKeyConstraint("day", "model", "upstream", name="pk_usage_day_totals"),
    )
    # usage_daily holds every event's sums since 0003: summed once more, coarser.
    _copy_sums("usage_daily", "usage_key_days", ("day", "key_id"))
    _copy_sums("usage_daily", "usage_day_totals", ("day", "model", "upstream"))
    op.drop_table("usage_daily")


def downgrade() -> None:
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("upstream", sa.String(100), nullable=False),
        *_sum_columns(),
        sa.PrimaryKeyConstraint("day", "key_id", "model", "upstream", name="pk_usage_daily"),
    )
    # The finer sums are gone: summed again from every event, as 0003 did.
    events = sa.table(
        "usage_events",
        sa.column("created_at"),
        *_columns("key_id", "model", "upstream", *_SUMS),
    )
    if op.get_bind().dialect.name == "postgresql":
        utc = sa.func.timezone(sa.literal_column("'UTC'"), events.c.created_at)
        day = sa.func.to_char(utc, sa.literal_column("'YYYY-MM-DD'"))
    else:
        day = sa.func.substr(events.c.created_at, 1, 10)  # naive UTC ISO text (UTCDateTime)
    keys = [events.c.key_id, events.c.model, events.c.upstream]
    sums = [sa.func.coalesce(sa.func.sum(events.c[name]), 0) for name in _SUMS]
    select = sa.select(day, *keys, *sums).group_by(day, *keys)
    daily = sa.table("usage_daily", *_columns("day", "key_id", "model", "upstream", *_SUMS))
    op.execute(daily.insert().from_select(list(daily.c.keys()), select))
    op.drop_table("usage_day_totals")
    op.drop_table("usage_key_days")


def _columns(*names: str) -> list[sa.ColumnClause[object]]:
    return [sa.column(name) for name in names]


def _copy_sums(source: str, target: str, groups: tuple[str, ...]) -> None:
    rows = sa.table(source, *_columns(*groups, *_SUMS))
    select = sa.select(
        *(rows.c[name] for name in groups), *(sa.func.sum(rows.c[name]) for name in _SUMS)
    )
    into = sa.table(target, *_columns(*groups, *_SUMS))
    op.execute(into.insert().from_select([*groups, *_SUMS], select.group_by(*groups)))
