"""Staging: a page of source records into ``ihub_records``, a few statements per page.

What dedupe reads lives in ``ihub_latest``, one row per record (its latest staged version and
digest), so the cost of a page follows the page, not the history of its records.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from models import deadletters, staging_pg
from models.db import dialect_insert
from models.schema import DEAD_ROW, LatestRecord, RecordStatus, StagedRecord
from models.storable import storable_id, storable_payload, storable_text
from models.values import SourceRecord, utcnow

S = RecordStatus
CHUNK = 1000


def stage(
    session: Session,
    integration: str,
    run_id: int | None,
    records: list[SourceRecord],
    *,
    due_in: float,
    force: bool = False,
) -> list[int]:
    """Insert each record unless its latest staged row is the same (or ``force``: a full
    refresh stages every record again); the new row ids, to publish.

    A few statements per page, whatever its size and the records' history: one read of
    ``ihub_latest`` (one row per record; on Postgres with the page's row ids), one multi-row
    insert (``COPY`` on Postgres), one or two multi-row writes of ``ihub_latest``.
    """
    page = {r.id: r for r in records}  # a repeated id in one page: the last one is current
    now = utcnow()
    due = now + timedelta(seconds=due_in)
    if session.get_bind().dialect.name == "postgresql":
        with contextlib.closing(staging_pg.cursor(session)) as cur:
            drawn, latest = staging_pg.read_page(cur, integration, list(page), dedupe=not force)
            rows = _changed(page.values(), latest)
            if not rows:
                return []
            ids = drawn[: len(rows)]
            staging_pg.remember_latest(cur, integration, rows, ids, None if force else latest)
            staging_pg.insert_rows(cur, integration, run_id, rows, ids, due=due, now=now)
            return sorted(ids)
    latest = {} if force else _latest_staged(session, integration, list(page))
    rows = _changed(page.values(), latest)
    if not rows:
        return []
    ids = _insert_rows(session, integration, run_id, rows, due=due, now=now)
    _remember_latest(session, integration, rows, ids)
    return sorted(ids)


def _changed(
    records: Iterable[SourceRecord], latest: dict[str, tuple[str, str]]
) -> list[tuple[str, str, str, str]]:
    """(record id, version, digest, payload) of each record whose latest staged row differs."""
    rows = []
    for record in records:
        payload = json.dumps(record.payload, sort_keys=True, default=str)
        digest = hashlib.sha256(payload.encode()).hexdigest()[:32]
        if latest.get(record.id) != (record.version, digest):
            rows.append((record.id, record.version, digest, payload))
    return rows


def _insert_rows(
    session: Session,
    integration: str,
    run_id: int | None,
    rows: list[tuple[str, str, str, str]],
    *,
    due: datetime,
    now: datetime,
) -> list[int]:
    """Elsewhere than Postgres: executemany with RETURNING, which SQLAlchemy batches into
    multi-row INSERTs ("insertmanyvalues") from one cached statement, ids in the order of
    ``rows``. Core, not the ORM's bulk path: the ORM collects every row's attributes in Python
    first (measured: a third of a page's staging time)."""
    values = [
        {
            "integration": integration,
            "record_id": record_id,
            "version": version,
            "digest": digest,
            "payload": payload,
            "status": S.PENDING,
            "attempts": 0,
            "deliveries": 0,
            "fetch_run_id": run_id,
            "due_at": due,
            "created_at": now,
        }
        for record_id, version, digest, payload in rows
    ]
    table = StagedRecord.__table__
    statement = insert(table).returning(table.c.id, sort_by_parameter_order=True)
    return list(session.scalars(statement, values))


def _remember_latest(
    session: Session, integration: str, rows: list[tuple[str, str, str, str]], ids: list[int]
) -> None:
    values = [
        {
            "integration": integration,
            "record_id": record_id,
            "version": version,
            "digest": digest,
            "row_id": row_id,
        }
        for (record_id, version, digest, _), row_id in zip(rows, ids, strict=True)
    ]
    upsert = dialect_insert(session, LatestRecord.__table__)
    statement = upsert.on_conflict_do_update(
        index_elements=["integration", "record_id"],
        set_={k: upsert.excluded[k] for k in ("version", "digest", "row_id")},
    )
    # RETURNING makes SQLAlchemy batch the rows into multi-row statements ("insertmanyvalues");
    # without it the driver's executemany sends one statement per row (measured: 80 % of a page)
    session.execute(statement.returning(upsert.table.c.row_id), values).all()


def _latest_staged(
    session: Session, integration: str, record_ids: list[str]
) -> dict[str, tuple[str, str]]:
    """The latest staged (version, digest) of each of ``record_ids``: one row per record."""
    latest: dict[str, tuple[str, str]] = {}
    for start in range(0, len(record_ids), CHUNK):
        query = select(LatestRecord.record_id, LatestRecord.version, LatestRecord.digest).where(
            LatestRecord.integration == integration,
            LatestRecord.record_id.in_(record_ids[start : start + CHUNK]),
        )
        for record_id, version, digest in session.execute(query):
            latest[record_id] = (version, digest)
    return latest


def stage_dead(
    session: Session,
    integration: str,
    run_id: int | None,
    record_id: str,
    payload: Any,
    reason: str,
) -> bool:
    """A record that cannot even be parsed: staged straight into the dead letters; False when
    the same record (id and payload) is already dead, as when each run re-reads it.

    Whatever the source sent, this insert cannot fail: the id is escaped and cut to the
    column's width, the reason escaped, and a payload that cannot be serialised is replaced by
    a note saying so (a record rejected for its id or its depth must not fail its page)."""
    now, stored_id = utcnow(), storable_id(record_id)
    body = storable_payload(payload)
    digest = hashlib.sha256(body.encode()).hexdigest()[:32]
    if _already_dead(session, integration, stored_id, digest):
        return False
    reason = storable_text(reason)
    row = StagedRecord(
        integration=integration,
        record_id=stored_id,
        version=now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        digest=digest,
        payload=body,
        status=S.DEAD,
        attempts=0,
        deliveries=0,
        fetch_run_id=run_id,
        last_error=reason,
        error_class="PermanentError",
        finished_at=now,
    )
    session.add(row)
    session.flush()
    deadletters.record(session, row, "PermanentError", reason, None, None)
    return True


def _already_dead(session: Session, integration: str, record_id: str, digest: str) -> bool:
    query = select(StagedRecord.id).where(
        text(DEAD_ROW),  # ix_ihub_records_dead_record
        StagedRecord.integration == integration,
        StagedRecord.record_id == record_id,
        StagedRecord.digest == digest,
    )
    return session.scalars(query.limit(1)).first() is not None
