"""run bounds: the row ids a fetch run's records lie between, for counting them by range

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("ihub_fetch_runs") as table:
        table.add_column(sa.Column("row_floor", ROW_ID, nullable=True))
        table.add_column(sa.Column("row_ceiling", ROW_ID, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ihub_fetch_runs") as table:
        table.drop_column("row_ceiling")
        table.drop_column("row_floor")
