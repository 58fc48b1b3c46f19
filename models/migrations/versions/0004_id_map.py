"""id map: source key → target id for REST targets that assign their own ids, with a per-key lock

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ihub_id_map",
        sa.Column("integration", sa.String(length=64), nullable=False),
        sa.Column("source_key", sa.String(length=255), nullable=False),
        sa.Column("target_id", sa.String(length=255), nullable=True),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("deleted_version", sa.String(length=64), nullable=True),
        sa.Column("lock_owner", sa.String(length=64), nullable=True),
        sa.Column("lock_expires_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("integration", "source_key"),
    )
    with op.batch_alter_table("ihub_id_map", schema=None) as batch_op:
        batch_op.create_index("ix_ihub_id_map_target", ["integration", "target_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ihub_id_map", schema=None) as batch_op:
        batch_op.drop_index("ix_ihub_id_map_target")
    op.drop_table("ihub_id_map")
