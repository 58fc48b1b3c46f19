"""partial indexes: a done row leaves the open-rows and dead-rows indexes, a staged one the
finished index, so a record's staging and done mark write four fewer index entries

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TABLE = "ihub_records"
# written out, not imported from models.schema: a migration keeps the schema of its day
OPEN_ROW = "status IN ('pending', 'processing', 'retrying')"
DEAD_ROW = "status = 'dead'"
FINISHED_ROW = "finished_at IS NOT NULL"


def _where(predicate: str) -> dict[str, object]:
    return {"postgresql_where": text(predicate), "sqlite_where": text(predicate)}


def upgrade() -> None:
    op.drop_index("ix_ihub_records_status_due", table_name=TABLE)
    op.drop_index("ix_ihub_records_record", table_name=TABLE)
    op.drop_index("ix_ihub_records_finished", table_name=TABLE)
    op.create_index("ix_ihub_records_open_due", TABLE, ["status", "due_at"], **_where(OPEN_ROW))
    op.create_index(
        "ix_ihub_records_dead_record", TABLE, ["integration", "record_id"], **_where(DEAD_ROW)
    )
    op.create_index("ix_ihub_records_finished", TABLE, ["finished_at"], **_where(FINISHED_ROW))


def downgrade() -> None:
    op.drop_index("ix_ihub_records_finished", table_name=TABLE)
    op.drop_index("ix_ihub_records_dead_record", table_name=TABLE)
    op.drop_index("ix_ihub_records_open_due", table_name=TABLE)
    op.create_index("ix_ihub_records_finished", TABLE, ["finished_at"])
    op.create_index("ix_ihub_records_record", TABLE, ["integration", "record_id"])
    op.create_index("ix_ihub_records_status_due", TABLE, ["status", "due_at"])
