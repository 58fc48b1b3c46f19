"""The queue's transitions for a chunk of rows (batched mode): one statement per chunk.

Each runs inside the caller's transaction, next to the chunk's multi-row sink upsert, so a
chunk commits whole or not at all; the caller splits a failing chunk down to single rows,
which take the per-record path (``models.queue``) and end on their own.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from models.queue import CLAIMED, Claim, S
from models.schema import StagedRecord
from models.values import utcnow


def claim_many(
    session: Session, row_ids: list[int], *, deadline: float, token: str | None
) -> list[Claim]:
    """Claim the rows of a chunk that wait (pending or retrying) in one statement, inside the
    caller's transaction; a row another task holds, or that is finished, is left out."""
    now, table = utcnow(), StagedRecord.__table__
    # Core on the table, not the ORM's bulk UPDATE: the same SQL, without the ORM's per-call
    # machinery
    statement = (
        update(table)
        .where(table.c.id.in_(row_ids), table.c.status.in_((S.PENDING, S.RETRYING)))
        .values(
            status=S.PROCESSING,
            attempts=table.c.attempts + 1,
            claim_token=token,
            started_at=now,
            due_at=now + timedelta(seconds=deadline),
        )
        .returning(*(table.c[column.key] for column in CLAIMED))
    )
    return [Claim.of(row) for row in session.execute(statement)]
