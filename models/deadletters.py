"""Dead letters: the error queue of the design, persisted next to the records they explain.

One row per failed record version (``record_row_id`` is unique), written in the transaction that
marks the record dead. Nothing here caps or drops them: they leave only by an explicit requeue
(the row goes back to pending, the letter stays as history) or an explicit purge. Every requeue,
redrive and purge is written to ``ihub_dead_letter_actions``: who, when, what, how many.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session

from models import rollups
from models.db import dialect_insert, session_scope
from models.redaction import redact
from models.schema import (
    DeadLetter,
    DeadLetterAction,
    DeadReason,
    RecordStatus,
    StagedRecord,
    others_than,
)
from models.values import utcnow

Publish = Callable[[list[int]], None]
CHUNK = 500
CRASH_CLASSES = frozenset({"WorkerLost"})
TRANSIENT_CLASSES = frozenset({"TransientError"})


def reason_for(error_class: str) -> DeadReason:
    if error_class in CRASH_CLASSES:
        return DeadReason.CRASH
    if error_class in TRANSIENT_CLASSES:
        return DeadReason.TRANSIENT
    return DeadReason.PERMANENT


@dataclass(frozen=True)
class Selection:
    """Which dead letters a list, requeue or purge acts on. All given conditions must hold.

    Only active letters (the record is still dead) match, except for a purge of history.
    ``everything`` must be said out loud: an empty selection matches nothing.
    """

    integration: str | None = None
    error_class: str | None = None
    message: str | None = None  # substring, case-insensitive
    since: datetime | None = None  # last failure at or after
    until: datetime | None = None  # last failure before
    row_ids: tuple[int, ...] = ()
    reasons: tuple[str, ...] = ()
    requeued_fewer_than: int | None = None
    everything: bool = False

    @property
    def empty(self) -> bool:
        return not (self.everything or any(v for k, v in asdict(self).items() if k != "everything"))

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.empty:
            return query.where(False)
        conditions = [
            (self.integration, lambda v: DeadLetter.integration == v),
            (self.error_class, lambda v: DeadLetter.error_class == v),
            (
                self.message,
                lambda v: func.lower(DeadLetter.message).contains(v.lower(), autoescape=True),
            ),
            (self.since, lambda v: DeadLetter.last_failed_at >= v),
            (self.until, lambda v: DeadLetter.last_failed_at < v),
            (self.row_ids, lambda v: DeadLetter.record_row_id.in_(v)),
            (self.reasons, lambda v: DeadLetter.reason.in_(v)),
        ]
        for value, condition in conditions:
            if value:
                query = query.where(condition(value))
        if self.requeued_fewer_than is not None:
            query = query.where(DeadLetter.requeue_count < self.requeued_fewer_than)
        return query

    def describe(self) -> str:
        data = {k: v for k, v in asdict(self).items() if v not in (None, (), False)}
        return json.dumps(data, default=str, sort_keys=True)


def _active(query: Select[Any]) -> Select[Any]:
    return query.where(DeadLetter.active.is_(True))


# --- writing --------------------------------------------------------------------------------


def record(
    session: Session,
    row: StagedRecord,
    error_class: str,
    message: str,
    traceback: str | None,
    worker: str | None,
) -> None:
    """Insert the record's dead letter, or refresh it when it dies again after a requeue."""

    now = utcnow()
    values = {
        "record_row_id": row.id,
        "integration": row.integration,
        "record_id": row.record_id,
        "version": row.version,
        "error_class": error_class,
        "reason": reason_for(error_class),
        "message": message,
        "traceback": traceback,
        "attempts": row.attempts,
        "worker": worker,
        "first_failed_at": now,
        "last_failed_at": now,
        "requeue_count": 0,
        "active": True,
    }
    statement = dialect_insert(session, DeadLetter).values(values)
    keep = {"first_failed_at", "requeue_count", "record_row_id"}
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["record_row_id"],
            set_={k: statement.excluded[k] for k in values if k not in keep},
        )
    )
    rollups.add(session, row.integration, dead=1, at=now)


# --- reading --------------------------------------------------------------------------------


def matching_ids(database_url: str, selection: Selection) -> list[int]:
    query = selection.apply(_active(select(DeadLetter.record_row_id)))
    with session_scope(database_url) as session:
        return [int(i) for i in session.scalars(query.order_by(DeadLetter.record_row_id))]


def list_letters(
    database_url: str, selection: Selection, *, limit: int = 100, offset: int = 0
) -> list[dict[str, Any]]:
    """Active dead letters, newest failure first."""
    query = selection.apply(_active(select(DeadLetter)))
    query = query.order_by(DeadLetter.last_failed_at.desc(), DeadLetter.id.desc())
    with session_scope(database_url) as session:
        return [as_dict(d) for d in session.scalars(query.limit(limit).offset(offset))]


def show(database_url: str, row_id: int) -> dict[str, Any] | None:
    """One dead letter (active or history) with the raw payload and the traceback."""
    with session_scope(database_url) as session:
        dead = session.scalars(select(DeadLetter).where(DeadLetter.record_row_id == row_id)).first()
        row = session.get(StagedRecord, row_id)
        if dead is None or row is None:
            return None
        return {
            **as_dict(dead),
            "traceback": redact(dead.traceback) if dead.traceback else None,
            "payload": json.loads(row.payload),
            "status": row.status,
        }


def as_dict(dead: DeadLetter) -> dict[str, Any]:
    return {
        "row_id": dead.record_row_id,
        "integration": dead.integration,
        "record_id": dead.record_id,
        "version": dead.version,
        "error_class": dead.error_class,
        "reason": dead.reason,
        "message": redact(dead.message or ""),
        "attempts": dead.attempts,
        "worker": dead.worker,
        "first_failed_at": iso(dead.first_failed_at),
        "last_failed_at": iso(dead.last_failed_at),
        "requeue_count": dead.requeue_count,
        "requeued_at": iso(dead.requeued_at),
        "requeued_by": dead.requeued_by,
        "active": dead.active,
    }


def actions(
    database_url: str, *, limit: int = 50, action: str | None = None
) -> list[dict[str, Any]]:
    """The newest requeues, redrives and purges first."""
    query = select(DeadLetterAction).order_by(DeadLetterAction.id.desc()).limit(limit)
    if action:
        query = query.where(DeadLetterAction.action == action)
    with session_scope(database_url) as session:
        return [
            {
                "id": a.id,
                "at": iso(a.at),
                "action": a.action,
                "actor": a.actor,
                "integration": a.integration,
                "selection": json.loads(a.selection),
                "count": a.count,
            }
            for a in session.scalars(query)
        ]


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() + "Z" if moment else None


# --- requeue and purge ----------------------------------------------------------------------


@dataclass
class Requeued:
    row_ids: list[int] = field(default_factory=list)
    dry_run: bool = False
    action_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "requeued": 0 if self.dry_run else len(self.row_ids),
            "would_requeue": len(self.row_ids) if self.dry_run else 0,
            "row_ids": self.row_ids,
            "action_id": self.action_id,
        }


def requeue(
    database_url: str,
    selection: Selection,
    *,
    actor: str,
    publish: Publish | None,
    action: str = "requeue",
    dry_run: bool = False,
    rate: float | None = None,
    batch: int = 100,
    due_in: float = 300.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Requeued:
    """Move the selected dead rows back to pending and publish them, ``rate`` rows a second.

    The selection is taken once, at the start, so a record that dies again while the command
    runs is not requeued twice by it. Each batch is one transaction (rows to pending, letters
    marked requeued, the action's count) followed by its publish; a failed publish loses
    nothing, the rows are pending with a deadline and the reconciler republishes them.
    """
    ids = matching_ids(database_url, selection)
    if dry_run or not ids:
        return Requeued(ids, dry_run)
    result = Requeued()
    started = clock()
    for start in range(0, len(ids), max(1, batch)):
        chunk = ids[start : start + batch]
        with session_scope(database_url) as session:
            if result.action_id is None:
                result.action_id = _log(session, action, actor, selection)
            moved = move_to_pending(session, chunk, actor=actor, due_in=due_in)
            _count(session, result.action_id, len(moved))
        if moved and publish is not None:
            publish(moved)
        result.row_ids += moved
        if rate:
            ahead = len(result.row_ids) / rate - (clock() - started)
            if ahead > 0 and start + batch < len(ids):
                sleep(ahead)
    return result


def move_to_pending(
    session: Session, row_ids: Sequence[int], *, actor: str, due_in: float
) -> list[int]:
    """The rows among ``row_ids`` that are still dead: pending, fresh budget, letter requeued."""
    rows = list(
        session.scalars(
            select(StagedRecord)
            .where(StagedRecord.id.in_(row_ids))
            .where(StagedRecord.status.not_in(others_than([RecordStatus.DEAD])))
            .order_by(StagedRecord.id)
            .with_for_update()
        )
    )
    now = utcnow()
    for row in rows:
        row.status, row.attempts, row.deliveries = RecordStatus.PENDING, 0, 0
        row.due_at, row.finished_at = now + timedelta(seconds=due_in), None
        row.claim_token = None
    ids = [r.id for r in rows]
    if ids:
        session.execute(
            update(DeadLetter)
            .where(DeadLetter.record_row_id.in_(ids))
            .values(
                active=False,
                requeued_at=now,
                requeued_by=actor[:255],
                requeue_count=DeadLetter.requeue_count + 1,
            )
        )
    return ids


def purge(
    database_url: str,
    *,
    older_than: timedelta,
    selection: Selection,
    actor: str,
    dry_run: bool = False,
) -> int:
    """Delete dead letters whose last failure is older than ``older_than``: retention.

    An active letter goes with its dead record row (the failed version is forgotten); a
    requeued one is only history, and only the letter goes. Returns how many letters.
    """
    cutoff = utcnow() - older_than
    query = selection.apply(select(DeadLetter.record_row_id, DeadLetter.active))
    with session_scope(database_url) as session:
        found = list(session.execute(query.where(DeadLetter.last_failed_at < cutoff)))
        if dry_run or not found:
            return len(found)
        active = [int(r) for r, is_active in found if is_active]
        every = [int(r) for r, _ in found]
        for start in range(0, len(every), CHUNK):
            chunk = every[start : start + CHUNK]
            session.execute(delete(DeadLetter).where(DeadLetter.record_row_id.in_(chunk)))
        for start in range(0, len(active), CHUNK):
            chunk = active[start : start + CHUNK]
            dead = StagedRecord.status == RecordStatus.DEAD
            session.execute(delete(StagedRecord).where(StagedRecord.id.in_(chunk), dead))
        action_id = _log(session, "purge", actor, selection, older_than=older_than)
        _count(session, action_id, len(found))
        return len(found)


def _log(session: Session, action: str, actor: str, selection: Selection, **extra: Any) -> int:
    described = json.loads(selection.describe())
    described.update({k: str(v) for k, v in extra.items()})
    entry = DeadLetterAction(
        at=utcnow(),
        action=action,
        actor=actor[:255],
        integration=selection.integration,
        selection=json.dumps(described, sort_keys=True),
        count=0,
    )
    session.add(entry)
    session.flush()
    return int(entry.id)


def _count(session: Session, action_id: int, n: int) -> None:
    if n:
        session.execute(
            update(DeadLetterAction)
            .where(DeadLetterAction.id == action_id)
            .values(count=DeadLetterAction.count + n)
        )
