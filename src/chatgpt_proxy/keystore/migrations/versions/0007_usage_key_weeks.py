"""Usage summed per week and key, so that the report by key over a month reads a row per key
and week instead of one per key and day; summed from usage_key_days, which holds every event's.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SUMS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost")


def upgrade() -> None:
    op.create_table(
        "usage_key_weeks",
        sa.Column("week", sa.String(10), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in _SUMS[:-1]),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("week", "key_id", name="pk_usage_key_weeks"),
        sqlite_with_rowid=False,
    )
    days = sa.table("usage_key_days", *(sa.column(name) for name in ("day", "key_id", *_SUMS)))
    # The Monday of each day's week, as the same ISO text the store writes.
    if op.get_bind().dialect.name == "postgresql":
        # A timestamp without time zone: the session's TimeZone must not move the Monday.
        day = sa.cast(days.c.day, sa.DateTime(timezone=False))
        monday = sa.func.date_trunc(sa.literal_column("'week'"), day)
        week = sa.func.to_char(monday, sa.literal_column("'YYYY-MM-DD'"))
    else:
        # Back six days, then on to the next Monday, or stay there if it is one.
        week = sa.func.date(days.c.day, "-6 days", "weekday 1")
    select = sa.select(
        week, days.c.key_id, *(sa.func.sum(days.c[name]) for name in _SUMS)
    ).group_by(week, days.c.key_id)
    weeks = sa.table("usage_key_weeks", *(sa.column(name) for name in ("week", "key_id", *_SUMS)))
    op.execute(weeks.insert().from_select(list(weeks.c.keys()), select))
    op.create_index(
        "ix_usage_key_weeks_week_total_tokens", "usage_key_weeks", ["week", "total_tokens"]
    )


def downgrade() -> None:
    op.drop_table("usage_key_weeks")
