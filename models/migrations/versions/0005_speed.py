"""speed: the latest version and digest per record, kept apart from the history

Revision ID: 0005
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0002"
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# the newest staged row of each record (the largest row id), whatever its history
BACKFILL = """
INSERT INTO ihub_latest (integration, record_id, version, digest, row_id)
SELECT r.integration, r.record_id, r.version, r.digest, r.id
FROM ihub_records r
JOIN (SELECT max(id) AS id FROM ihub_records GROUP BY integration, record_id) newest
  ON newest.id = r.id
"""


def upgrade() -> None:
    op.create_table(
        "ihub_latest",
        sa.Column("integration", sa.String(length=64), nullable=False),
        sa.Column("record_id", sa.String(length=255), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("digest", sa.String(length=32), nullable=False),
        sa.Column("row_id", ROW_ID, nullable=False),
        sa.PrimaryKeyConstraint("integration", "record_id"),
    )
    op.execute(BACKFILL)


def downgrade() -> None:
    op.drop_table("ihub_latest")
