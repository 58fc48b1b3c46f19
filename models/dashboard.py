"""Read-only queries behind the status page, its JSON API, ``ihub status`` and ``/metrics``.

Every time is naive UTC, like the columns; callers pass the bounds (``since`` inclusive,
``until`` exclusive), so "today" is decided once, by the caller, from one clock. Each query is
an aggregate the database computes over an index range (``ix_ihub_records_finished`` for
windows, ``ix_ihub_records_integration_status`` for counts); no query loads rows to count them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, case, func, literal, literal_column, select
from sqlalchemy.orm import Session

from models import rollups
from models.db import session_scope
from models.redaction import redact
from models.schema import (
    BUCKET_COLUMNS,
    DeadLetter,
    FetchRun,
    RecordStatus,
    Rollup,
    StagedRecord,
    Token,
)

S = RecordStatus
R = StagedRecord
U = Rollup
MESSAGE_CHARS = 300


@dataclass(frozen=True)
class DeadFilter:
    """Which active dead letters: by integration, error class and time of the last failure."""

    integration: str | None = None
    error_class: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @property
    def narrower_than_integration(self) -> bool:
        return bool(self.error_class or self.since or self.until)

    def apply(self, query: Select[Any]) -> Select[Any]:
        query = query.where(DeadLetter.active.is_(True))
        if self.integration:
            query = query.where(DeadLetter.integration == self.integration)
        if self.error_class:
            query = query.where(DeadLetter.error_class == self.error_class)
        if self.since:
            query = query.where(DeadLetter.last_failed_at >= self.since)
        if self.until:
            query = query.where(DeadLetter.last_failed_at < self.until)
        return query


def status_counts(database_url: str) -> dict[str, dict[str, int]]:
    """Rows per integration and status, every status present (one index-only GROUP BY)."""
    query = select(R.integration, R.status, func.count()).group_by(R.integration, R.status)
    found: dict[str, dict[str, int]] = {}
    with session_scope(database_url) as session:
        for integration, status, n in session.execute(query):
            found.setdefault(integration, {s.value: 0 for s in S})[status] = int(n)
    return found


def tokens(database_url: str) -> list[dict[str, Any]]:
    """Token health per credential (``NAME:source``, ``NAME:sink``); never the token values."""
    query = select(
        Token.credential,
        Token.expires_at,
        Token.refreshed_at,
        Token.refresh_count,
        Token.failure_count,
        Token.last_error,
    ).order_by(Token.credential)
    with session_scope(database_url) as session:
        return [
            {
                "credential": credential,
                "integration": credential.rpartition(":")[0] or credential,
                "expires_at": expires_at,
                "refreshed_at": refreshed_at,
                "refresh_count": int(refreshes or 0),
                "failure_count": int(failures or 0),
                "last_error": redact(last_error) if last_error else None,
            }
            for credential, expires_at, refreshed_at, refreshes, failures, last_error in (
                session.execute(query)
            )
        ]


Windows = Mapping[str, tuple[datetime, datetime]]


def outcomes(
    database_url: str, windows: Windows, integration: str | None = None
) -> dict[str, dict[str, int]]:
    """Per named window: records that finished done or dead in it, from the per-minute
    rollups (a minute counts when it starts inside the window)."""
    columns = []
    for since, until in windows.values():
        inside = and_(U.minute >= since, U.minute < until)
        columns += [func.sum(U.done).filter(inside), func.sum(U.dead).filter(inside)]
    query = select(*columns).where(*rollups.where(*_span(windows), integration))
    with session_scope(database_url) as session:
        row = session.execute(query).one()
    return {
        key: {"done": int(row[2 * i] or 0), "dead": int(row[2 * i + 1] or 0)}
        for i, key in enumerate(windows)
    }


def processing_time(
    database_url: str, windows: Windows, integration: str | None = None
) -> dict[str, dict[str, Any]]:
    """Per named window: count, mean and p95 of the processing time of the records done in
    it, from the rollups: the mean is exact, the p95 is the nearest rank to the resolution of
    the buckets (``models.schema.DURATION_BOUNDS_MS``: the bound of the bucket that holds it).
    """
    buckets = [U.__table__.c[name] for name in BUCKET_COLUMNS]
    columns = []
    for since, until in windows.values():
        inside = and_(U.minute >= since, U.minute < until)
        columns += [func.sum(U.duration_count).filter(inside)]
        columns += [func.sum(U.duration_sum_ms).filter(inside)]
        columns += [func.sum(b).filter(inside) for b in buckets]
    width = 2 + len(buckets)
    query = select(*columns).where(*rollups.where(*_span(windows), integration))
    with session_scope(database_url) as session:
        row = session.execute(query).one()
    found = {}
    for i, key in enumerate(windows):
        n, total = int(row[width * i] or 0), float(row[width * i + 1] or 0.0)
        counts = [int(c or 0) for c in row[width * i + 2 : width * (i + 1)]]
        p95 = rollups.p95_from_buckets(counts)
        found[key] = {
            "count": n,
            "avg_ms": round(total / n, 3) if n else None,
            "p95_ms": None if p95 is None else round(p95, 3),
        }
    return found


def _span(windows: Windows) -> tuple[datetime, datetime]:
    return min(s for s, _ in windows.values()), max(u for _, u in windows.values())


def throughput(
    database_url: str, since: datetime, until: datetime, integration: str | None = None
) -> dict[datetime, dict[str, int]]:
    """Records finished per minute (done and dead), keyed by the minute's start."""
    query = (
        select(U.minute, func.sum(U.done), func.sum(U.dead))
        .where(*rollups.where(since, until, integration))
        .group_by(U.minute)
    )
    per_minute: dict[datetime, dict[str, int]] = {}
    with session_scope(database_url) as session:
        for start, done, dead in session.execute(query):
            key = start if isinstance(start, datetime) else datetime.fromisoformat(start)
            if done or dead:
                per_minute[key] = {"done": int(done or 0), "dead": int(dead or 0)}
    return per_minute


def errors(
    database_url: str,
    since: datetime,
    until: datetime,
    *,
    integration: str | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    """Records whose failure happened in the window and that are still failed: dead ones (at
    the time they died) and retrying ones (at the start of the attempt that failed)."""
    dead = _error_query(R.finished_at, S.DEAD, since, until, integration)
    retrying = _error_query(R.started_at, S.RETRYING, since, until, integration)
    with session_scope(database_url) as session:
        total = sum(
            int(session.scalar(select(func.count()).select_from(q.subquery())) or 0)
            for q in (dead, retrying)
        )
        rows = [
            row
            for query in (dead, retrying)
            for row in session.execute(query.order_by(literal_column("at").desc()).limit(limit))
        ]
    rows.sort(key=lambda r: (r.at, r.row_id), reverse=True)
    return {"total": total, "items": [_error_dict(r) for r in rows[:limit]]}


def _error_query(
    moment: Any, status: str, since: datetime, until: datetime, integration: str | None
) -> Select[Any]:
    query = select(
        moment.label("at"),
        R.integration,
        R.id.label("row_id"),
        R.record_id,
        R.status,
        R.error_class,
        func.substr(R.last_error, 1, MESSAGE_CHARS).label("message"),
        R.attempts,
    ).where(R.status == status, moment >= since, moment < until)
    return query.where(R.integration == integration) if integration else query


def _error_dict(row: Any) -> dict[str, Any]:
    return {
        "at": row.at,
        "integration": row.integration,
        "row_id": int(row.row_id),
        "record_id": row.record_id,
        "status": row.status,
        "error_class": row.error_class,
        "message": redact(row.message or ""),
        "attempts": int(row.attempts),
    }


def dead_letters(
    database_url: str, flt: DeadFilter, *, limit: int = 50, offset: int = 0
) -> dict[str, Any]:
    """One page of active dead letters, newest failure first, and how many match in all."""
    query = flt.apply(
        select(
            DeadLetter.record_row_id,
            DeadLetter.integration,
            DeadLetter.record_id,
            DeadLetter.error_class,
            func.substr(DeadLetter.message, 1, MESSAGE_CHARS).label("message"),
            DeadLetter.attempts,
            DeadLetter.first_failed_at,
            DeadLetter.last_failed_at,
            DeadLetter.requeue_count,
        )
    )
    count = flt.apply(select(func.count()).select_from(DeadLetter))
    with session_scope(database_url) as session:
        total = int(session.scalar(count) or 0)
        page = session.execute(
            query.order_by(DeadLetter.last_failed_at.desc(), DeadLetter.id.desc())
            .limit(limit)
            .offset(offset)
        )
        items = [{**row._asdict(), "row_id": int(row.record_row_id)} for row in page]
    for item in items:
        del item["record_row_id"]
        item["message"] = redact(item["message"] or "")
    return {"total": total, "items": items}


def dead_ids(database_url: str, flt: DeadFilter) -> list[int]:
    """The record row ids of every active dead letter the filter matches."""
    query = flt.apply(select(DeadLetter.record_row_id)).order_by(DeadLetter.record_row_id)
    with session_scope(database_url) as session:
        return [int(i) for i in session.scalars(query)]


def dead_facets(database_url: str) -> dict[str, list[str]]:
    """The integrations and error classes that active dead letters have, for filter menus."""
    active = DeadLetter.active.is_(True)
    with session_scope(database_url) as session:
        names = session.scalars(
            select(DeadLetter.integration).where(active).distinct().order_by(DeadLetter.integration)
        )
        classes = session.scalars(
            select(DeadLetter.error_class).where(active).distinct().order_by(DeadLetter.error_class)
        )
        return {"integrations": list(names), "error_classes": list(classes)}


def _finished_in(since: datetime, until: datetime, integration: str | None) -> tuple[Any, ...]:
    window = (R.finished_at >= since, R.finished_at < until)
    return (*window, R.integration == integration) if integration else window


# --- for /metrics: totals since the rows exist, computed by the database at scrape time ---


@dataclass(frozen=True)
class RecordStats:
    """For /metrics: rows now in each status (a gauge), and the counters from the rollups."""

    rows: list[tuple[str, str, int]]  # integration, status, rows now
    totals: dict[str, dict[str, int]]  # integration: done, dead, retries (only ever grow)
    durations: dict[str, tuple[list[int], int, float]]  # done: cumulative buckets, count, sum


def record_stats(database_url: str) -> RecordStats:
    """Buckets of ``models.schema.DURATION_BOUNDS_MS`` (the +Inf one is the count)."""
    now = select(R.integration, R.status, func.count()).group_by(R.integration, R.status)
    columns = ("done", "dead", "retries", "duration_count", "duration_sum_ms", *BUCKET_COLUMNS)
    with session_scope(database_url) as session:
        rows = [(i, s, int(n)) for i, s, n in session.execute(now)]
        sums = rollups.totals(session, columns)
    totals: dict[str, dict[str, int]] = {}
    durations: dict[str, tuple[list[int], int, float]] = {}
    for integration, found in sums.items():
        totals[integration] = {k: int(found[k]) for k in ("done", "dead", "retries")}
        if found["duration_count"]:
            cumulative, seen = [], 0
            for name in BUCKET_COLUMNS[:-1]:
                seen += int(found[name])
                cumulative.append(seen)
            count = int(found["duration_count"])
            durations[integration] = (cumulative, count, float(found["duration_sum_ms"]))
    return RecordStats(rows, totals, durations)


def fetch_buckets(
    database_url: str, bounds_s: Sequence[float]
) -> dict[str, tuple[list[int], int, float]]:
    """The same for the duration of finished fetch runs, in seconds."""
    with session_scope(database_url) as session:
        seconds = _seconds_between(session, FetchRun.started_at, FetchRun.finished_at)
        cumulative = [func.sum(case((seconds <= b, 1), else_=0)) for b in bounds_s]
        query = (
            select(FetchRun.integration, func.count(), func.sum(seconds), *cumulative)
            .where(FetchRun.finished_at.is_not(None))
            .group_by(FetchRun.integration)
        )
        return {
            row[0]: ([int(c or 0) for c in row[3:]], int(row[1]), float(row[2] or 0.0))
            for row in session.execute(query)
        }


def fetch_run_totals(database_url: str) -> list[tuple[str, str, int]]:
    query = select(FetchRun.integration, FetchRun.status, func.count()).group_by(
        FetchRun.integration, FetchRun.status
    )
    with session_scope(database_url) as session:
        return [(i, s, int(n)) for i, s, n in session.execute(query)]


def dead_letter_totals(database_url: str) -> list[tuple[str, str, int, int]]:
    """(integration, error class, active dead letters, deaths ever): a record that died, was
    requeued and died again counts twice (``requeue_count`` + 1 while active)."""
    active = case((DeadLetter.active.is_(True), 1), else_=0)
    query = select(
        DeadLetter.integration,
        DeadLetter.error_class,
        func.sum(active),
        func.sum(DeadLetter.requeue_count + active),
    ).group_by(DeadLetter.integration, DeadLetter.error_class)
    with session_scope(database_url) as session:
        return [(i, c, int(a or 0), int(d or 0)) for i, c, a, d in session.execute(query)]


def _seconds_between(session: Session, start: Any, end: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    # julianday() is a double of days: round to the millisecond it can resolve
    return func.round((func.julianday(end) - func.julianday(start)) * literal(86400.0), 3)
