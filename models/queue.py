"""The staged-record queue: every state change of a record is one of these functions.

Every transition is guarded by the state it leaves, so a duplicate or late task can never move a
finished record backwards: ``done`` is final, ``dead`` leaves only by an explicit requeue.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, DateTime, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import psycopg2
from sqlalchemy.orm import Session

from models import deadletters, driver, finishing, prepared, rollups, runs
from models.db import get_engine, is_sqlite, session_scope
from models.redaction import redact
from models.schema import OPEN, OPEN_ROW, RecordStatus, StagedRecord, others_than, sql_list
from models.staging import stage as stage  # re-exported: callers stage through the queue
from models.staging import stage_dead as stage_dead
from models.values import utcnow

S = RecordStatus
CHUNK = 1000
# what a claim hands the worker, in Claim's order
CLAIMED = (
    StagedRecord.id,
    StagedRecord.integration,
    StagedRecord.record_id,
    StagedRecord.version,
    StagedRecord.payload,
    StagedRecord.attempts,
    StagedRecord.deliveries,
)


def sink_version(version: str, row_id: int) -> str:
    """What the sink compares: the updated instant, then staging order within one instant."""
    return f"{version}|{row_id:020d}"


@dataclass(frozen=True)
class Claim:
    row_id: int
    integration: str
    record_id: str
    version: str
    payload: dict[str, Any]
    attempts: int
    crash_redeliveries: int

    @classmethod
    def of(cls, row: Any) -> Claim:
        """The claim of a claimed row (a row of ``CLAIMED`` columns, or the mapped row)."""
        return cls.of_values(tuple(getattr(row, column.key) for column in CLAIMED))

    @classmethod
    def of_values(cls, values: tuple[Any, ...]) -> Claim:
        """The claim of a driver row: the ``CLAIMED`` columns in their order."""
        row_id, integration, record_id, version, payload, attempts, deliveries = values
        return cls(
            row_id, integration, record_id, version, json.loads(payload), attempts, deliveries
        )


def claim(
    database_url: str,
    row_id: int,
    *,
    deadline: float,
    token: str | None = None,
    redelivered: bool = True,
) -> Claim | None:
    """Mark the row processing for task ``token``; None when there is nothing to do.

    Nothing to do: the row is done or dead (a duplicate task), or another task holds it and its
    lease (``deadline`` seconds from its start, longer than the hard time limit) still runs, as
    when a duplicate publish, a reconciler republish or a redelivered ETA message arrives while
    the first copy works: so one record is never processed twice in parallel.

    The same task id again, or a lease run out, means the holder is gone: the row is taken over.
    A redelivered message (the broker restores it after its worker died) or a run-out lease is
    counted, so a record that kills its worker every time can be dead-lettered instead of
    looping (PITFALLS 5); our own retry after a database outage is not.
    """
    engine = get_engine(database_url)
    if is_sqlite(engine):  # one transaction: SQLite's BEGIN IMMEDIATE serialises writers
        with session_scope(database_url) as session:
            waiting = _claim_waiting(session, row_id, deadline=deadline, token=token)
            return waiting or _claim_held(session, row_id, deadline, token, redelivered)
    # the common case, a waiting row, first and on its own
    waiting = _claim_waiting_pg(database_url, row_id, deadline=deadline, token=token)
    if waiting is not None:
        return waiting
    with session_scope(database_url) as session:
        return _claim_held(session, row_id, deadline, token, redelivered)


# one UPDATE ... RETURNING, as text: the SQLite path runs it in its transaction, the Postgres
# path sends it compiled for psycopg2 after a SET LOCAL (``_claim_sql``)
_CLAIM_WAITING = text(
    f"UPDATE ihub_records SET status = '{S.PROCESSING}', attempts = attempts + 1,"
    " claim_token = :token, started_at = :now, due_at = :due"
    f" WHERE id = :row_id AND status NOT IN {sql_list(others_than((S.PENDING, S.RETRYING)))}"
    f" RETURNING {', '.join(column.key for column in CLAIMED)}"
).bindparams(bindparam("now", type_=DateTime), bindparam("due", type_=DateTime))


def _claim_waiting(
    connection: Session | Connection, row_id: int, *, deadline: float, token: str | None
) -> Claim | None:
    """Claim a row that waits (pending or retrying): one UPDATE ... RETURNING."""
    row = connection.execute(_CLAIM_WAITING, _claim_params(row_id, deadline, token)).first()
    return None if row is None else Claim.of(row)


def _claim_waiting_pg(
    database_url: str, row_id: int, *, deadline: float, token: str | None
) -> Claim | None:
    """``_claim_waiting`` in one round trip, not three (BEGIN, UPDATE, COMMIT): round trips
    are most of a record's cost (bench/stages.py, bench/README.md). Its commit is not waited
    on (``SET LOCAL synchronous_commit``, in the same query string, for this transaction
    alone): it is visible at once, and a crash of the server that loses it loses every later
    commit too (the write-ahead log is flushed in order), so the row is simply waiting again."""
    claim = prepared.Statement(_claim_sql(), _claim_params(row_id, deadline, token))
    with driver.connection(database_url) as connection:
        row = prepared.send(connection, [claim], prefix=NO_WAIT).row
    return None if row is None else Claim.of_values(row)


NO_WAIT = "SET LOCAL synchronous_commit = off"


@functools.cache
def _claim_sql() -> str:
    """``_CLAIM_WAITING`` as psycopg2 SQL."""
    return str(_CLAIM_WAITING.compile(dialect=psycopg2.dialect()))


def _claim_params(row_id: int, deadline: float, token: str | None) -> dict[str, Any]:
    now = utcnow()
    return {"row_id": row_id, "token": token, "now": now, "due": now + timedelta(seconds=deadline)}


def _claim_held(
    session: Session, row_id: int, deadline: float, token: str | None, redelivered: bool
) -> Claim | None:
    """A row that was not waiting: held (its lease judged, a crash counted) or finished, read
    under a row lock; a row that began to wait since is claimed here too."""
    row = session.scalars(
        select(StagedRecord).where(StagedRecord.id == row_id).with_for_update()
    ).first()
    if row is None or row.status not in OPEN:
        return None
    now = utcnow()
    if row.status == S.PROCESSING:
        started = row.started_at or now
        lease_runs = started + timedelta(seconds=deadline) > now
        same_holder = None in (token, row.claim_token) or row.claim_token == token
        if lease_runs and not same_holder:
            return None
        if redelivered or not lease_runs:
            row.deliveries += 1
    row.status, row.attempts, row.claim_token = S.PROCESSING, row.attempts + 1, token
    row.started_at, row.due_at = now, now + timedelta(seconds=deadline)
    session.flush()
    return Claim.of(row)


def mark_done(database_url: str, row_id: int, duration_ms: float) -> None:
    with session_scope(database_url) as session:
        mark_done_many(session, [row_id], duration_ms)


def mark_done_many(session: Session, row_ids: list[int], duration_ms: float) -> int:
    """Mark the open rows among ``row_ids`` done in the caller's transaction (each with
    ``duration_ms``: a chunk written together shares its mean), counted in the minute's
    rollups; how many were open."""
    now, table = utcnow(), StagedRecord.__table__
    if session.get_bind().dialect.name == "postgresql":
        return finishing.mark_done(session, row_ids, duration_ms, now)
    done = session.scalars(
        update(table)  # Core, not the ORM's bulk UPDATE: the same SQL, less machinery
        .where(table.c.id.in_(row_ids), table.c.status.not_in(others_than(OPEN)))
        .values(
            status=S.DONE,
            finished_at=now,
            duration_ms=duration_ms,
            due_at=None,
            last_error=None,
            error_class=None,
        )
        .returning(table.c.integration)
    ).all()
    for integration, n in Counter(done).items():
        rollups.add(session, integration, done=n, durations_ms=[duration_ms] * n, at=now)
    return len(done)


def mark_retrying(database_url: str, row_id: int, error: BaseException, due_at: datetime) -> bool:
    with session_scope(database_url) as session:
        integration = session.scalar(
            update(StagedRecord)
            .where(StagedRecord.id == row_id, StagedRecord.status == S.PROCESSING)
            .values(
                status=S.RETRYING,
                due_at=due_at,
                last_error=redact(str(error))[:2000],
                error_class=type(error).__name__,
            )
            .returning(StagedRecord.integration)
            .execution_options(synchronize_session=False)
        )
        if integration is None:
            return False
        rollups.add(session, integration, retries=1)
        return True


def mark_dead(
    database_url: str,
    row_id: int,
    *,
    error_class: str,
    message: str,
    traceback: str | None,
    worker: str | None,
    expect_token: str | None = None,
) -> bool:
    """Dead-letter the row and write (or refresh) its one dead-letter entry, in one transaction.

    ``expect_token``: only while that task still holds the row (a spooled dead letter replayed
    late must not kill a record another task has taken over since).
    """
    with session_scope(database_url) as session:
        row = session.scalars(
            select(StagedRecord).where(StagedRecord.id == row_id).with_for_update()
        ).first()
        if row is None or row.status not in OPEN:
            return False
        if expect_token is not None and row.claim_token != expect_token:
            return False
        row.status, row.finished_at, row.due_at = S.DEAD, utcnow(), None
        row.last_error, row.error_class = message[:2000], error_class
        _upsert_dead_letter(session, row, error_class, message, traceback, worker)
        return True


_upsert_dead_letter = deadletters.record


def republish_due(
    database_url: str,
    *,
    grace: float,
    limit: int = 5000,
    skip: list[str] | None = None,
    statuses: tuple[str, ...] = OPEN,
    overdue: float = 0.0,
) -> list[int]:
    """Open rows past their deadline (by more than ``overdue`` seconds): the broker lost their
    task, or their worker died."""
    now = utcnow()
    with session_scope(database_url) as session:
        ids = list(
            session.scalars(
                select(StagedRecord.id)
                .where(
                    text(OPEN_ROW),  # ix_ihub_records_open_due
                    StagedRecord.status.in_(statuses),
                    StagedRecord.due_at < now - timedelta(seconds=overdue),
                    StagedRecord.integration.not_in(skip or []),
                )
                .order_by(StagedRecord.due_at)
                .limit(limit)
            )
        )
        if ids:
            session.execute(
                update(StagedRecord)
                .where(StagedRecord.id.in_(ids))
                .values(due_at=now + timedelta(seconds=grace))
            )
        return ids


def requeue_dead(
    database_url: str,
    *,
    integration: str | None = None,
    row_ids: list[int] | None = None,
    everything: bool = False,
    dry_run: bool = False,
    due_in: float = 300.0,
    actor: str = "unknown",
) -> list[int]:
    """Dead rows back to pending, recorded as a requeue by ``actor``; the caller publishes the
    returned ids. ``models.deadletters.requeue`` adds filters, batches and a rate limit."""
    if not (integration or row_ids or everything):
        raise ValueError("name an integration, row ids, or everything")
    selection = deadletters.Selection(
        integration=integration, row_ids=tuple(row_ids or ()), everything=everything
    )
    return deadletters.requeue(
        database_url,
        selection,
        actor=actor,
        publish=None,
        dry_run=dry_run,
        batch=CHUNK,
        due_in=due_in,
    ).row_ids


def counts(database_url: str, integration: str | None = None) -> dict[str, int]:
    """Rows per status (every status present, zero when none)."""
    with session_scope(database_url) as session:
        query = select(StagedRecord.status, func.count()).group_by(StagedRecord.status)
        if integration:
            query = query.where(StagedRecord.integration == integration)
        found = {status: n for status, n in session.execute(query)}
    return {s.value: int(found.get(s.value, 0)) for s in S}


def run_counts(database_url: str, run_id: int) -> dict[str, int]:
    """The run's records per status. They are counted within the run's row-id bounds, a range
    of the primary key: by ``fetch_run_id`` alone, which no index serves, every count read the
    whole table, history included (``ihub sync --wait`` counts every second)."""
    with session_scope(database_url) as session:
        query = (
            select(StagedRecord.status, func.count())
            .where(StagedRecord.fetch_run_id == run_id)
            .group_by(StagedRecord.status)
        )
        bounds = runs.row_bounds(session, run_id)
        if bounds is not None:
            query = query.where(StagedRecord.id.between(bounds[0] + 1, bounds[1]))
        found = {status: n for status, n in session.execute(query)}
    return {s.value: int(found.get(s.value, 0)) for s in S}


def list_dead(
    database_url: str,
    *,
    integration: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    selection = deadletters.Selection(integration=integration, everything=True)
    return deadletters.list_letters(database_url, selection, limit=limit)


def show_dead(database_url: str, row_id: int) -> dict[str, Any] | None:
    return deadletters.show(database_url, row_id)


def release(database_url: str, row_id: int, *, due_in: float) -> None:
    """Hand a claimed row back untouched (its integration is paused): pending, attempt undone."""
    with session_scope(database_url) as session:
        session.execute(
            update(StagedRecord)
            .where(StagedRecord.id == row_id, StagedRecord.status == S.PROCESSING)
            .values(
                status=S.PENDING,
                attempts=StagedRecord.attempts - 1,
                due_at=utcnow() + timedelta(seconds=due_in),
            )
        )


def reopen(database_url: str, integration: str, *, due_in: float) -> list[int]:
    """The open rows of an integration that resumes: the caller publishes them again."""
    with session_scope(database_url) as session:
        ids = list(
            session.scalars(
                select(StagedRecord.id).where(
                    StagedRecord.integration == integration, StagedRecord.status.in_(OPEN)
                )
            )
        )
        if ids:
            session.execute(
                update(StagedRecord)
                .where(StagedRecord.id.in_(ids))
                .values(due_at=utcnow() + timedelta(seconds=due_in))
            )
        return ids
