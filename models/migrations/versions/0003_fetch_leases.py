"""fetch leases (who holds a fetch, since when, its last heartbeat); fetch continuations

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ihub_leases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("holder", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("acquired_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("renewed_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("ihub_integrations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fetch_resume", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ihub_integrations", schema=None) as batch_op:
        batch_op.drop_column("fetch_resume")
    with op.batch_alter_table("ihub_leases", schema=None) as batch_op:
        batch_op.drop_column("renewed_at")
        batch_op.drop_column("acquired_at")
        batch_op.drop_column("holder")
