"""Fetch runs: one row per delta fetch, what it read and staged."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from models.db import session_scope
from models.redaction import redact
from models.schema import FetchRun, StagedRecord
from models.values import utcnow


def start(database_url: str, integration: str) -> int:
    """A new run; called under the integration's fetch lease, so a run still marked running
    lost its holder (killed): it is marked ``abandoned``."""
    with session_scope(database_url) as session:
        session.execute(
            update(FetchRun)
            .where(FetchRun.integration == integration, FetchRun.status == "running")
            .values(status="abandoned", finished_at=utcnow(), error="its fetch was lost")
        )
        run = FetchRun(
            integration=integration,
            status="running",
            pages=0,
            fetched=0,
            staged=0,
            row_floor=_largest_row_id(session),
        )
        session.add(run)
        session.flush()
        return run.id


def finish(database_url: str, run_id: int, *, status: str, error: str | None = None) -> None:
    with session_scope(database_url) as session:
        run = session.get(FetchRun, run_id)
        if run is not None:
            run.status, run.error, run.finished_at = status, error, utcnow()
            run.row_ceiling = _largest_row_id(session)


def row_bounds(session: Session, run_id: int) -> tuple[int, int] | None:
    """The row ids the run's records lie between (exclusive, inclusive), or None for a run
    from before they were kept. A record's row id is drawn from a sequence (SQLite: past the
    largest) after the run started, and its page committed before the run ended; while the
    run goes on, its upper bound is the largest row id now."""
    floor, ceiling = session.execute(
        select(FetchRun.row_floor, FetchRun.row_ceiling).where(FetchRun.id == run_id)
    ).one_or_none() or (None, None)
    if floor is None:
        return None
    return floor, ceiling if ceiling is not None else _largest_row_id(session)


def _largest_row_id(session: Session) -> int:
    """One step down the primary key, however many rows the table holds."""
    return int(session.scalar(select(func.max(StagedRecord.id))) or 0)


def get(database_url: str, run_id: int) -> dict[str, Any] | None:
    with session_scope(database_url) as session:
        run = session.get(FetchRun, run_id)
        return _as_dict(run) if run else None


def latest(database_url: str, integration: str) -> dict[str, Any] | None:
    with session_scope(database_url) as session:
        run = session.scalars(
            select(FetchRun)
            .where(FetchRun.integration == integration)
            .order_by(FetchRun.id.desc())
            .limit(1)
        ).first()
        return _as_dict(run) if run else None


def _as_dict(run: FetchRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "integration": run.integration,
        "status": run.status,
        "pages": run.pages,
        "fetched": run.fetched,
        "staged": run.staged,
        "error": redact(run.error) if run.error else None,
        "started_at": run.started_at.isoformat() + "Z" if run.started_at else None,
        "finished_at": run.finished_at.isoformat() + "Z" if run.finished_at else None,
    }
