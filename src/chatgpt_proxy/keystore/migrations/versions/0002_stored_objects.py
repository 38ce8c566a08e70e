"""Who owns each stored upstream object (a Responses API response...), and which key holds it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stored_objects",
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("object_id", sa.String(256), nullable=False),
        sa.Column("owner_key_id", sa.String(32), nullable=False),
        sa.Column("upstream", sa.String(100), nullable=False),
        sa.Column("upstream_alias", sa.String(100), nullable=False),
        # An aware UTC instant, as in 0001 (the store's UTCDateTime converts).
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "object_id", name="pk_stored_objects"),
        sa.ForeignKeyConstraint(
            ["owner_key_id"], ["client_keys.id"], name="fk_stored_objects_owner_key_id_client_keys"
        ),
    )
    op.create_index(
        "ix_stored_objects_owner_key_id_kind_created_at",
        "stored_objects",
        ["owner_key_id", "kind", "created_at"],
    )


def downgrade() -> None:
    op.drop_table("stored_objects")
