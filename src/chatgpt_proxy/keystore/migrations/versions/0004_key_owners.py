"""Self-service keys: each key's owner (a Discord user), blocked owners, the interaction ids
already answered (replay protection shared by every replica), and key holders' page sessions.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch mode: SQLite cannot add an indexed column in place on every version.
    with op.batch_alter_table("client_keys") as batch:
        batch.add_column(sa.Column("owner", sa.String(100), nullable=True))
        batch.create_index("ix_client_keys_owner", ["owner"])
    op.create_table(
        "blocked_owners",
        sa.Column("owner", sa.String(100), nullable=False),
        sa.Column("blocked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner", name="pk_blocked_owners"),
    )
    op.create_table(
        "seen_interactions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_seen_interactions"),
    )
    op.create_index("ix_seen_interactions_seen_at", "seen_interactions", ["seen_at"])
    op.create_table(
        "holder_sessions",
        sa.Column("id_hash", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id_hash", name="pk_holder_sessions"),
        sa.ForeignKeyConstraint(
            ["key_id"], ["client_keys.id"], name="fk_holder_sessions_key_id_client_keys"
        ),
    )
    op.create_index("ix_holder_sessions_expires_at", "holder_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_table("holder_sessions")
    op.drop_table("seen_interactions")
    op.drop_table("blocked_owners")
    with op.batch_alter_table("client_keys") as batch:
        batch.drop_index("ix_client_keys_owner")
        batch.drop_column("owner")
