"""Retention of finished rows: ``ihub_records`` costs what changes, not the whole history.

A done row older than the retention is deleted; what dedupe needs lives in ``ihub_latest`` and
what the figures need in ``ihub_rollups``, so nothing a fetch or a chart reads goes with it.
Dead rows stay until an operator purges them, and so does a done row that still has a dead
letter (the history of a requeue).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, exists, select

from models.db import session_scope
from models.schema import DeadLetter, RecordStatus, StagedRecord
from models.values import utcnow

BATCH = 5000


def prune(database_url: str, *, older_than: timedelta, limit: int = 50_000) -> int:
    """Delete up to ``limit`` done rows finished before now - ``older_than``; how many went.
    Batches of ``BATCH`` rows, each its own transaction, so no lock is held for long."""
    cutoff = utcnow() - older_than
    lettered = exists().where(DeadLetter.record_row_id == StagedRecord.id)
    removed = 0
    while removed < limit:
        with session_scope(database_url) as session:
            ids = list(
                session.scalars(
                    select(StagedRecord.id)
                    .where(
                        StagedRecord.status == RecordStatus.DONE,
                        StagedRecord.finished_at < cutoff,
                        ~lettered,
                    )
                    .limit(min(BATCH, limit - removed))
                )
            )
            if not ids:
                break
            session.execute(delete(StagedRecord).where(StagedRecord.id.in_(ids)))
        removed += len(ids)
    return removed
