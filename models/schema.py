"""Tables: the database is the system of record; the broker only carries row ids."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from models.values import utcnow

# BIGINT on Postgres, INTEGER (so that it is the rowid alias) on SQLite.
RowId = BigInteger().with_variant(Integer(), "sqlite")


class RecordStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    RETRYING = "retrying"
    DONE = "done"
    DEAD = "dead"


OPEN = (RecordStatus.PENDING, RecordStatus.PROCESSING, RecordStatus.RETRYING)  # not finished


def others_than(statuses: Iterable[str]) -> tuple[str, ...]:
    """Every status but ``statuses``: ``status NOT IN others_than(wanted)`` is ``status IN
    wanted`` in a form no index can serve, for a lookup of rows by id.

    Written as ``id = ANY(ids) AND status IN (...)``, the lookup is at the planner's mercy: on
    statistics that say few rows are open (a table never analysed, or analysed before a
    backfill) it scans the status index and reads every open row to keep the chunk's
    (measured: 40 ms a chunk of 500 at 20,000 open rows, 70 % of a batched record's Postgres
    time, and growing with the backlog). A ``NOT IN`` leaves it the primary key only."""
    wanted = set(statuses)
    return tuple(status for status in RecordStatus if status not in wanted)


def sql_list(statuses: Iterable[str]) -> str:
    """Statuses as an SQL list literal, ``('done', 'dead')``, for statements written as text."""
    return "(" + ", ".join(f"'{status}'" for status in statuses) + ")"


# The predicates of ihub_records' partial indexes. A row is in the first only while it is open,
# in the second only once dead, in the third once finished, so staging a row writes two fewer
# index entries and its done mark two fewer (measured: 7.2 -> 5.4 and 12.3 -> 7.8 us of
# Postgres CPU a row). A query that wants one of these indexes says its predicate word for
# word, as text: SQLite uses a partial index only for a query whose WHERE has its terms.
OPEN_ROW = f"status IN {sql_list(OPEN)}"
DEAD_ROW = f"status = '{RecordStatus.DEAD}'"
FINISHED_ROW = "finished_at IS NOT NULL"


def partial(predicate: str) -> dict[str, object]:
    """``Index`` keyword arguments: only the rows for which ``predicate`` holds, on both
    dialects."""
    return {"postgresql_where": text(predicate), "sqlite_where": text(predicate)}


class IntegrationStatus(enum.StrEnum):
    ACTIVE = "active"
    REAUTH_REQUIRED = "reauth_required"


class Base(DeclarativeBase):
    pass


class IntegrationState(Base):
    """Per integration: the watermark, and whether fetching is paused."""

    __tablename__ = "ihub_integrations"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    watermark_updated: Mapped[str | None] = mapped_column(String(32))
    watermark_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(20), default=IntegrationStatus.ACTIVE)
    status_reason: Mapped[str | None] = mapped_column(Text)
    last_fetch_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    # JSON: where a pass over an unordered listing that a run's budget cut goes on next run
    fetch_resume: Mapped[str | None] = mapped_column(Text)


class StagedRecord(Base):
    """One version of one source record, staged before its task is published.

    ``version`` is the record's updated instant; ``digest`` its content. A fetch stages a record
    unless the latest staged row for that id has the same version and digest, so re-reads of the
    lookback window add nothing, while a change within one timestamp tick is still staged.
    """

    __tablename__ = "ihub_records"
    __table_args__ = (
        Index("ix_ihub_records_open_due", "status", "due_at", **partial(OPEN_ROW)),
        Index("ix_ihub_records_dead_record", "integration", "record_id", **partial(DEAD_ROW)),
        Index("ix_ihub_records_integration_status", "integration", "status"),
        Index("ix_ihub_records_finished", "finished_at", **partial(FINISHED_ROW)),
    )
    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    integration: Mapped[str] = mapped_column(String(64))
    record_id: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(32))
    digest: Mapped[str] = mapped_column(String(32))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default=RecordStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    deliveries: Mapped[int] = mapped_column(Integer, default=0)
    fetch_run_id: Mapped[int | None] = mapped_column(RowId)
    due_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    error_class: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    duration_ms: Mapped[float | None] = mapped_column(Float)
    # the task id holding the row while it is processing: a second task for the same row (a
    # duplicate publish, a reconciler republish, an ETA message redelivered) leaves it alone
    claim_token: Mapped[str | None] = mapped_column(String(64))


class LatestRecord(Base):
    """What dedupe needs, one row per record (not per version): the latest staged version and
    digest, so staging a page reads one row per record however long its history, and pruning
    finished rows of ``ihub_records`` forgets nothing a fetch needs."""

    __tablename__ = "ihub_latest"
    integration: Mapped[str] = mapped_column(String(64), primary_key=True)
    record_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    version: Mapped[str] = mapped_column(String(32))
    digest: Mapped[str] = mapped_column(String(32))
    row_id: Mapped[int] = mapped_column(RowId)


# upper bounds of the processing-time buckets kept per minute (ms); the last bucket is +Inf
DURATION_BOUNDS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)
BUCKET_COLUMNS = (*(f"le_{b}" for b in DURATION_BOUNDS_MS), "le_inf")


class Rollup(Base):
    """Outcomes per integration and minute, written in the transaction of each outcome.

    The dashboard's and /metrics' figures are sums over these rows, so pruning finished
    records changes no chart and no counter goes down. ``shard`` spreads concurrent writers
    of one minute over a few rows (a process writes its pid's shard), so that they do not
    queue on one row lock; readers sum the shards.
    """

    __tablename__ = "ihub_rollups"
    __table_args__ = (Index("ix_ihub_rollups_minute", "minute"),)
    integration: Mapped[str] = mapped_column(String(64), primary_key=True)
    minute: Mapped[datetime] = mapped_column(DateTime, primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    done: Mapped[int] = mapped_column(BigInteger, default=0)
    dead: Mapped[int] = mapped_column(BigInteger, default=0)
    retries: Mapped[int] = mapped_column(BigInteger, default=0)
    duration_count: Mapped[int] = mapped_column(BigInteger, default=0)
    duration_sum_ms: Mapped[float] = mapped_column(Float, default=0.0)
    le_5: Mapped[int] = mapped_column(BigInteger, default=0)
    le_10: Mapped[int] = mapped_column(BigInteger, default=0)
    le_25: Mapped[int] = mapped_column(BigInteger, default=0)
    le_50: Mapped[int] = mapped_column(BigInteger, default=0)
    le_100: Mapped[int] = mapped_column(BigInteger, default=0)
    le_250: Mapped[int] = mapped_column(BigInteger, default=0)
    le_500: Mapped[int] = mapped_column(BigInteger, default=0)
    le_1000: Mapped[int] = mapped_column(BigInteger, default=0)
    le_2500: Mapped[int] = mapped_column(BigInteger, default=0)
    le_5000: Mapped[int] = mapped_column(BigInteger, default=0)
    le_10000: Mapped[int] = mapped_column(BigInteger, default=0)
    le_30000: Mapped[int] = mapped_column(BigInteger, default=0)
    le_60000: Mapped[int] = mapped_column(BigInteger, default=0)
    le_inf: Mapped[int] = mapped_column(BigInteger, default=0)


class DeadReason(enum.StrEnum):
    """Why a record died, in the words a redrive policy selects by."""

    TRANSIENT = "transient"  # retries spent on an error that might pass
    PERMANENT = "permanent"  # retrying cannot help (4xx, rejected value, bad record)
    CRASH = "crash"  # its worker was lost too many times while processing it


class DeadLetter(Base):
    """What an operator needs to understand a failed record and replay it: one row per record."""

    __tablename__ = "ihub_dead_letters"
    __table_args__ = (
        Index("ix_ihub_dead_letters_integration", "integration", "last_failed_at"),
        Index("ix_ihub_dead_letters_active_failed", "active", "last_failed_at"),
    )
    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    record_row_id: Mapped[int] = mapped_column(
        RowId, ForeignKey("ihub_records.id", ondelete="CASCADE"), unique=True
    )
    integration: Mapped[str] = mapped_column(String(64))
    record_id: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(32))
    error_class: Mapped[str] = mapped_column(String(255))
    message: Mapped[str] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(255))
    first_failed_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_failed_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    requeue_count: Mapped[int] = mapped_column(Integer, default=0)
    requeued_at: Mapped[datetime | None] = mapped_column(DateTime)
    active: Mapped[bool] = mapped_column(default=True)
    reason: Mapped[str] = mapped_column(String(20), default=DeadReason.PERMANENT)
    requeued_by: Mapped[str | None] = mapped_column(String(255))


class DeadLetterAction(Base):
    """Every requeue, redrive and purge of dead letters: who, when, what was selected, how many."""

    __tablename__ = "ihub_dead_letter_actions"
    __table_args__ = (Index("ix_ihub_dead_letter_actions_at", "at"),)
    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    action: Mapped[str] = mapped_column(String(20))  # requeue | redrive | purge
    actor: Mapped[str] = mapped_column(String(255))
    integration: Mapped[str | None] = mapped_column(String(64))
    selection: Mapped[str] = mapped_column(Text)  # the filter, as JSON
    count: Mapped[int] = mapped_column(Integer, default=0)


class FetchRun(Base):
    """One delta fetch: what it read and staged, for the summary and the dashboard."""

    __tablename__ = "ihub_fetch_runs"
    __table_args__ = (Index("ix_ihub_fetch_runs_integration", "integration", "started_at"),)
    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    integration: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(20), default="running")
    pages: Mapped[int] = mapped_column(Integer, default=0)
    fetched: Mapped[int] = mapped_column(Integer, default=0)
    staged: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # the largest row id of ihub_records when the run started, and when it ended: its rows lie
    # between, so counting them reads a range of the primary key, not the table's history
    row_floor: Mapped[int | None] = mapped_column(RowId)
    row_ceiling: Mapped[int | None] = mapped_column(RowId)


class Token(Base):
    """One OAuth 2.0 token per credential, shared by every worker; secrets encrypted at rest."""

    __tablename__ = "ihub_tokens"
    credential: Mapped[str] = mapped_column(String(128), primary_key=True)
    access_token: Mapped[str | None] = mapped_column(Text)
    refresh_token: Mapped[str | None] = mapped_column(Text)
    token_type: Mapped[str | None] = mapped_column(String(32))
    expires_at: Mapped[float | None] = mapped_column(Float)
    issued_at: Mapped[float | None] = mapped_column(Float)
    seed_hash: Mapped[str | None] = mapped_column(String(64))
    refreshed_at: Mapped[datetime | None] = mapped_column(DateTime)
    refresh_count: Mapped[int] = mapped_column(Integer, default=0)
    failure_count: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


class Lease(Base):
    """A named lock with a short expiry that its holder's heartbeat moves: one fetch per
    integration on any database. ``holder`` and ``acquired_at`` say who runs it since when."""

    __tablename__ = "ihub_leases"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(128))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    holder: Mapped[str | None] = mapped_column(String(255))
    acquired_at: Mapped[datetime | None] = mapped_column(DateTime)
    renewed_at: Mapped[datetime | None] = mapped_column(DateTime)


class IdMapEntry(Base):
    """Source key → the target's own id, for REST targets that assign ids (ServiceNow sys_id).

    ``version`` is the last version written there (ihub's version guard for targets that do not
    compare versions), ``deleted_version`` the tombstone of a deletion; ``lock_owner`` and
    ``lock_expires_at`` are the per-key lock that keeps two workers from creating one record.
    """

    __tablename__ = "ihub_id_map"
    __table_args__ = (Index("ix_ihub_id_map_target", "integration", "target_id"),)
    integration: Mapped[str] = mapped_column(String(64), primary_key=True)
    source_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    target_id: Mapped[str | None] = mapped_column(String(255))
    version: Mapped[str | None] = mapped_column(String(64))
    deleted_version: Mapped[str | None] = mapped_column(String(64))
    lock_owner: Mapped[str | None] = mapped_column(String(64))
    lock_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
