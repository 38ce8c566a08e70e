"""The console's sessions, the audit log of admin actions, and usage summed per day.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As in 0001: SQLite autoincrements only an INTEGER PRIMARY KEY.
_EventId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TOKENS = ("prompt_tokens", "completion_tokens", "total_tokens")


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id_hash", sa.String(64), nullable=False),
        # Aware UTC instants, as in 0001 (the store's UTCDateTime converts).
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id_hash", name="pk_console_sessions"),
    )
    op.create_index("ix_console_sessions_seen_at", "console_sessions", ["seen_at"])
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("upstream", sa.String(100), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("day", "key_id", "model", "upstream", name="pk_usage_daily"),
    )
    # The usage recorded before this migration, summed once.
    op.execute(_daily_sums())
    op.create_table(
        "audit_events",
        sa.Column("id", _EventId, autoincrement=True, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(200), nullable=True),
        sa.Column("address", sa.String(64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
    )


def _daily_sums() -> sa.Insert:
    names = ("key_id", "model", "upstream", "requests", *_TOKENS, "cost", "created_at")
    events = sa.table("usage_events", *(sa.column(name) for name in names))
    daily = sa.table("usage_daily", sa.column("day"), *(sa.column(name) for name in names[:-1]))
    if op.get_bind().dialect.name == "postgresql":
        utc = sa.func.timezone(sa.literal_column("'UTC'"), events.c.created_at)
        day = sa.func.to_char(utc, sa.literal_column("'YYYY-MM-DD'"))
    else:
        day = sa.func.substr(events.c.created_at, 1, 10)  # naive UTC ISO text (UTCDateTime)
    keys = (events.c.key_id, events.c.model, events.c.upstream)
    sums = [sa.func.sum(events.c[name]) for name in ("requests", *_TOKENS)]
    select = sa.select(day, *keys, *sums, sa.func.coalesce(sa.func.sum(events.c.cost), 0.0))
    return daily.insert().from_select(["day", *names[:-1]], select.group_by(day, *keys))


def downgrade() -> None:
    op.drop_table("audit_events")
    op.drop_table("usage_daily")
    op.drop_table("console_sessions")
