"""Client keys and their usage events.

Revision ID: 0001
Revises:
Create Date: 2026-05-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, *, nullable: bool) -> sa.Column[object]:
    # Aware UTC instants: timestamptz on PostgreSQL, a naive-UTC string on SQLite (the store's
    # UTCDateTime type converts on the way in and out).
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "client_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        _timestamp("created_at", nullable=False),
        _timestamp("updated_at", nullable=False),
        _timestamp("expires_at", nullable=True),
        _timestamp("revoked_at", nullable=True),
        sa.Column("rpm", sa.BigInteger(), nullable=True),
        sa.Column("tpm", sa.BigInteger(), nullable=True),
        sa.Column("max_concurrency", sa.BigInteger(), nullable=True),
        sa.Column("daily_token_budget", sa.BigInteger(), nullable=True),
        sa.Column("total_token_budget", sa.BigInteger(), nullable=True),
        sa.Column("daily_cost_budget", sa.Float(), nullable=True),
        sa.Column("total_cost_budget", sa.Float(), nullable=True),
        sa.Column("models", sa.Text(), nullable=True),
        sa.Column("moderation", sa.String(16), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_client_keys"),
        sa.UniqueConstraint("key_hash", name="uq_client_keys_key_hash"),
    )
    op.create_index("ix_client_keys_updated_at", "client_keys", ["updated_at"])

    op.create_table(
        "usage_events",
        # SQLite autoincrements only an INTEGER PRIMARY KEY.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        _timestamp("created_at", nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("upstream", sa.String(100), nullable=False),
        sa.Column("endpoint", sa.String(100), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("total_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_usage_events"),
        sa.ForeignKeyConstraint(
            ["key_id"], ["client_keys.id"], name="fk_usage_events_key_id_client_keys"
        ),
    )
    op.create_index("ix_usage_events_key_id_created_at", "usage_events", ["key_id", "created_at"])
    op.create_index("ix_usage_events_created_at", "usage_events", ["created_at"])


def downgrade() -> None:
    op.drop_table("usage_events")
    op.drop_table("client_keys")
