"""initial schema

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ihub_fetch_runs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("integration", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("pages", sa.Integer(), nullable=False),
        sa.Column("fetched", sa.Integer(), nullable=False),
        sa.Column("staged", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("ihub_fetch_runs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ihub_fetch_runs_integration", ["integration", "started_at"], unique=False
        )

    op.create_table(
        "ihub_integrations",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("watermark_updated", sa.String(length=32), nullable=True),
        sa.Column("watermark_id", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("last_fetch_at", sa.DateTime(), nullable=True),
        sa.Column("last_success_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "ihub_leases",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "ihub_records",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("integration", sa.String(length=64), nullable=False),
        sa.Column("record_id", sa.String(length=255), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("digest", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column(
            "fetch_run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("due_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("error_class", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("ihub_records", schema=None) as batch_op:
        batch_op.create_index("ix_ihub_records_finished", ["finished_at"], unique=False)
        batch_op.create_index("ix_ihub_records_record", ["integration", "record_id"], unique=False)
        batch_op.create_index(
            "ix_ihub_records_integration_status", ["integration", "status"], unique=False
        )
        batch_op.create_index("ix_ihub_records_status_due", ["status", "due_at"], unique=False)

    op.create_table(
        "ihub_tokens",
        sa.Column("credential", sa.String(length=128), nullable=False),
        sa.Column("access_token", sa.Text(), nullable=True),
        sa.Column("refresh_token", sa.Text(), nullable=True),
        sa.Column("token_type", sa.String(length=32), nullable=True),
        sa.Column("expires_at", sa.Float(), nullable=True),
        sa.Column("issued_at", sa.Float(), nullable=True),
        sa.Column("seed_hash", sa.String(length=64), nullable=True),
        sa.Column("refreshed_at", sa.DateTime(), nullable=True),
        sa.Column("refresh_count", sa.Integer(), nullable=False),
        sa.Column("failure_count", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("credential"),
    )
    op.create_table(
        "ihub_dead_letters",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "record_row_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("integration", sa.String(length=64), nullable=False),
        sa.Column("record_id", sa.String(length=255), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("error_class", sa.String(length=255), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("first_failed_at", sa.DateTime(), nullable=False),
        sa.Column("last_failed_at", sa.DateTime(), nullable=False),
        sa.Column("requeue_count", sa.Integer(), nullable=False),
        sa.Column("requeued_at", sa.DateTime(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["record_row_id"], ["ihub_records.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("record_row_id"),
    )
    with op.batch_alter_table("ihub_dead_letters", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ihub_dead_letters_integration", ["integration", "last_failed_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("ihub_dead_letters", schema=None) as batch_op:
        batch_op.drop_index("ix_ihub_dead_letters_integration")

    op.drop_table("ihub_dead_letters")
    op.drop_table("ihub_tokens")
    with op.batch_alter_table("ihub_records", schema=None) as batch_op:
        batch_op.drop_index("ix_ihub_records_status_due")
        batch_op.drop_index("ix_ihub_records_record")
        batch_op.drop_index("ix_ihub_records_integration_status")
        batch_op.drop_index("ix_ihub_records_finished")

    op.drop_table("ihub_records")
    op.drop_table("ihub_leases")
    op.drop_table("ihub_integrations")
    with op.batch_alter_table("ihub_fetch_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_ihub_fetch_runs_integration")

    op.drop_table("ihub_fetch_runs")
