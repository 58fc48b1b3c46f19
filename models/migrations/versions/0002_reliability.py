"""reliability: claim tokens, dead-letter reasons, the dead-letter action log

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("ihub_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim_token", sa.String(length=64), nullable=True))
    with op.batch_alter_table("ihub_dead_letters", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("reason", sa.String(length=20), nullable=False, server_default="permanent")
        )
        batch_op.add_column(sa.Column("requeued_by", sa.String(length=255), nullable=True))
        batch_op.create_index(
            "ix_ihub_dead_letters_active_failed", ["active", "last_failed_at"], unique=False
        )
    op.execute("UPDATE ihub_dead_letters SET reason = 'crash' WHERE error_class = 'WorkerLost'")
    op.create_table(
        "ihub_dead_letter_actions",
        sa.Column("id", ROW_ID, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("integration", sa.String(length=64), nullable=True),
        sa.Column("selection", sa.Text(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("ihub_dead_letter_actions", schema=None) as batch_op:
        batch_op.create_index("ix_ihub_dead_letter_actions_at", ["at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("ihub_dead_letter_actions", schema=None) as batch_op:
        batch_op.drop_index("ix_ihub_dead_letter_actions_at")
    op.drop_table("ihub_dead_letter_actions")
    with op.batch_alter_table("ihub_dead_letters", schema=None) as batch_op:
        batch_op.drop_index("ix_ihub_dead_letters_active_failed")
        batch_op.drop_column("requeued_by")
        batch_op.drop_column("reason")
    with op.batch_alter_table("ihub_records", schema=None) as batch_op:
        batch_op.drop_column("claim_token")
