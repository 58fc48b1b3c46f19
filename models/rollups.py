"""Per-minute outcome aggregates: what the dashboard and /metrics count (invariant 10).

``add`` runs inside the transaction that records the outcome (done, retrying, dead), so a
figure can never disagree with the rows it counts, and a figure never goes down: pruning,
purging or requeueing rows leaves the aggregates alone. ``rebuild`` derives them from the rows
once (the migration, and tests that seed rows by hand).
"""

from __future__ import annotations

import bisect
import functools
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models.schema import (
    BUCKET_COLUMNS,
    DURATION_BOUNDS_MS,
    DeadLetter,
    RecordStatus,
    Rollup,
    StagedRecord,
)
from models.values import utcnow

SHARDS = 8
COUNTERS = ("done", "dead", "retries", "duration_count", "duration_sum_ms", *BUCKET_COLUMNS)


def this_shard() -> int:
    """This process's rollup row of a minute: concurrent workers mostly update different
    rows, so they seldom wait on each other's row lock."""
    return os.getpid() % SHARDS


def minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def bucket_column(duration_ms: float) -> str:
    """The bucket of one duration: the first bound it does not exceed."""
    return BUCKET_COLUMNS[bisect.bisect_left(DURATION_BOUNDS_MS, duration_ms)]


def add(
    session: Session,
    integration: str,
    *,
    done: int = 0,
    dead: int = 0,
    retries: int = 0,
    durations_ms: Sequence[float] = (),
    at: datetime | None = None,
) -> None:
    """Count outcomes into this minute's row (of this process's shard): one upsert."""
    values: dict[str, Any] = {name: 0 for name in COUNTERS}
    values.update(done=done, dead=dead, retries=retries, duration_count=len(durations_ms))
    values["duration_sum_ms"] = float(sum(durations_ms))
    for duration in durations_ms:
        values[bucket_column(duration)] += 1
    key = {"integration": integration, "minute": minute_of(at or utcnow())}
    _upsert(session, [{**key, "shard": this_shard(), **values}])


def _upsert(session: Session | Connection, rows: list[dict[str, Any]]) -> None:
    bind = session if isinstance(session, Connection) else session.get_bind()
    session.execute(_statement(bind.dialect.name), rows)


@functools.cache
def _statement(dialect_name: str) -> Any:
    """Built once per dialect: one upsert per outcome is on every record's path."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    insert = dialect.insert(Rollup)
    table = Rollup.__table__.c
    return insert.on_conflict_do_update(
        index_elements=["integration", "minute", "shard"],
        set_={name: table[name] + insert.excluded[name] for name in COUNTERS},
    )


# --- reading -----------------------------------------------------------------------------


def where(since: datetime, until: datetime, integration: str | None) -> tuple[Any, ...]:
    """Minutes that start in [since, until)."""
    window = (Rollup.minute >= since, Rollup.minute < until)
    return (*window, Rollup.integration == integration) if integration else window


def p95_from_buckets(counts: Sequence[int]) -> float | None:
    """The nearest-rank p95 to bucket resolution: the upper bound of the bucket holding it
    (the last bound for the +Inf bucket)."""
    total = sum(counts)
    if not total:
        return None
    rank, seen = (95 * total + 99) // 100, 0
    for bound, n in zip((*DURATION_BOUNDS_MS, DURATION_BOUNDS_MS[-1]), counts, strict=True):
        seen += n
        if seen >= rank:
            return float(bound)
    return float(DURATION_BOUNDS_MS[-1])


# --- deriving them from rows -----------------------------------------------------------


def rebuild(session: Session | Connection) -> int:
    """Replace every aggregate by what the rows say: done rows at their finish, each death of a
    dead letter at its last failure, attempts beyond the first at the row's last moment."""
    session.execute(delete(Rollup))
    found: dict[tuple[str, datetime], dict[str, Any]] = {}

    def slot(integration: str, moment: datetime) -> dict[str, Any]:
        key = (integration, minute_of(moment))
        return found.setdefault(key, {name: 0 for name in COUNTERS})

    moment = func.coalesce(StagedRecord.finished_at, StagedRecord.started_at)
    moment = func.coalesce(moment, StagedRecord.created_at)
    query = select(
        StagedRecord.integration,
        moment,
        StagedRecord.status,
        StagedRecord.duration_ms,
        case((StagedRecord.attempts > 1, StagedRecord.attempts - 1), else_=0),
    )
    for integration, at, status, duration, retries in session.execute(query):
        at = at if isinstance(at, datetime) else datetime.fromisoformat(str(at))
        counts = slot(integration, at)
        counts["retries"] += int(retries or 0)
        if status == RecordStatus.DONE:
            _count_done(counts, duration)
    letters = select(
        DeadLetter.integration,
        DeadLetter.last_failed_at,
        DeadLetter.requeue_count + case((DeadLetter.active.is_(True), 1), else_=0),
    )
    for integration, at, deaths in session.execute(letters):
        slot(integration, at)["dead"] += int(deaths or 0)
    rows = [{"integration": i, "minute": m, "shard": 0, **v} for (i, m), v in found.items()]
    if rows:
        _upsert(session, rows)
    return len(rows)


def _count_done(counts: dict[str, Any], duration: float | None) -> None:
    counts["done"] += 1
    if duration is not None:
        counts["duration_count"] += 1
        counts["duration_sum_ms"] += float(duration)
        counts[bucket_column(duration)] += 1


def totals(session: Session, columns: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per integration: the sums of ``columns`` over every minute ever recorded."""
    names = list(columns)
    query = select(Rollup.integration, *(func.sum(Rollup.__table__.c[n]) for n in names)).group_by(
        Rollup.integration
    )
    return {
        row[0]: {n: row[i + 1] or 0 for i, n in enumerate(names)} for row in session.execute(query)
    }
