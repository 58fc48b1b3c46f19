"""The queue's transitions for a chunk of rows (batched mode): one statement each per chunk.

Both run inside the caller's transaction, next to the chunk's multi-row sink upsert, so a chunk
commits whole or not at all; the caller splits a failing chunk down to single rows, which take
the per-record path (``models.queue``) and end on their own.

A chunk's claim is a row lock, not a write: its transaction ends with the rows done or with
nothing, so a claim written first would never be seen by anyone else. Each row is then written
once, by ``finish_many`` (done, its attempt counted), not twice (bench/stages.py, 10,000
records: 7,162 and 6,267 rows a second before, 8,795 and 7,376 after).
"""

from __future__ import annotations

import contextlib
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import finishing, staging_pg
from models.queue import CLAIMED, Claim, S
from models.schema import StagedRecord, others_than, sql_list
from models.values import utcnow

# the chunk's claim as driver SQL: read straight off the cursor, its rows are claims already
_CLAIM_PG = (
    f"SELECT {', '.join(column.key for column in CLAIMED)} FROM ihub_records"
    f" WHERE id = ANY(%s) AND status NOT IN {sql_list(others_than((S.PENDING, S.RETRYING)))}"
    " FOR UPDATE"
)


def claim_many(session: Session, row_ids: list[int]) -> list[Claim]:
    """Lock and read the rows of a chunk that wait (pending or retrying), in one statement
    inside the caller's transaction; a row another task holds, or that is finished, is left
    out (a second task locking the same rows waits, then finds them done).

    On PostgreSQL the statement goes to the driver as it is and each row becomes a ``Claim``
    at once (measured: half the client time of a 500-row claim through SQLAlchemy's rows)."""
    if session.get_bind().dialect.name == "postgresql":
        with contextlib.closing(staging_pg.cursor(session)) as cur:
            cur.execute(_CLAIM_PG, (row_ids,))
            return [Claim.of_values(values) for values in cur]
    table = StagedRecord.__table__
    statement = (
        select(*(table.c[column.key] for column in CLAIMED))
        .where(table.c.id.in_(row_ids), table.c.status.not_in(others_than((S.PENDING, S.RETRYING))))
        .with_for_update()
    )
    return [Claim.of(row) for row in session.execute(statement)]


def finish_many(
    session: Session,
    row_ids: list[int],
    *,
    duration_ms: float,
    token: str | None,
    started: datetime,
) -> int:
    """Mark the claimed rows done, each with ``duration_ms`` and one attempt more, held by
    ``token`` since ``started``; counted in the minute's rollup (PostgreSQL)."""
    claim = {"token": token, "started": started}
    return finishing.mark_done(session, row_ids, duration_ms, utcnow(), claim=claim)
