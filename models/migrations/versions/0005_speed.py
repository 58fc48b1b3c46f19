"""speed: the latest version and digest per record, apart from the history; per-minute rollups

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
BOUNDS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)
INTEGER_COUNTERS = (
    "done",
    "dead",
    "retries",
    "duration_count",
    *(f"le_{b}" for b in BOUNDS),
    "le_inf",
)

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
    counters = [sa.Column(name, sa.BigInteger(), nullable=False) for name in INTEGER_COUNTERS]
    op.create_table(
        "ihub_rollups",
        sa.Column("integration", sa.String(length=64), nullable=False),
        sa.Column("minute", sa.DateTime(), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("duration_sum_ms", sa.Float(), nullable=False),
        *counters,
        sa.PrimaryKeyConstraint("integration", "minute", "shard"),
    )
    op.create_index("ix_ihub_rollups_minute", "ihub_rollups", ["minute"], unique=False)
    _rebuild_rollups()


def _rebuild_rollups() -> None:
    """The figures so far, from the rows (the app's own derivation, once). Offline SQL has no
    rows to read: a DBA applying it by hand starts the rollups empty, as a new install does."""
    from alembic import context

    from models import rollups

    if context.is_offline_mode():
        op.execute("-- ihub_rollups starts empty: rows finished before 0005 are not counted")
        return
    rollups.rebuild(op.get_bind())


def downgrade() -> None:
    op.drop_index("ix_ihub_rollups_minute", table_name="ihub_rollups")
    op.drop_table("ihub_rollups")
    op.drop_table("ihub_latest")
