"""Batched mode: one task writes a chunk of staged rows with one multi-row upsert.

The record stays the unit of outcome (ARCHITECTURE invariant 9). A chunk is claimed, written
and marked done in one transaction; when anything in it fails, the transaction rolls back
whole and the chunk is split in two, down to single rows, which take the per-record path
(``sync.process_record``): the one at fault ends retrying or dead with its own reason, its
version guard and its place in the metrics, and the rest are done.

A chunk message the broker redelivers (its worker died) runs record by record, so a record
that kills its worker is counted and buried as in per-record mode instead of looping.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from models import chunks
from models.db import session_scope
from models.values import utcnow
from pipeline import sync, transform
from pipeline.delta import is_deletion
from pipeline.hub import Hub
from pipeline.sinks import SqlSink
from pipeline.spool import is_database_outage

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """What became of each row: done together, or the per-record outcome of a single row."""

    done: list[int] = field(default_factory=list)
    single: list[tuple[int, sync.Outcome]] = field(default_factory=list)
    splits: int = 0

    def count(self, status: str) -> int:
        found = sum(1 for _, outcome in self.single if outcome.status == status)
        return found + (len(self.done) if status == "done" else 0)


def process_batch(hub: Hub, row_ids: list[int], *, delivery: sync.Delivery) -> BatchResult:
    """Write the chunk ``row_ids``; each row ends done, retrying or dead on its own."""
    result = BatchResult()
    if delivery.redelivered:
        _one_by_one(hub, row_ids, delivery, result)
    else:
        _write_or_split(hub, sorted(set(row_ids)), delivery, result)
    return result


def _write_or_split(
    hub: Hub, row_ids: list[int], delivery: sync.Delivery, result: BatchResult
) -> None:
    if len(row_ids) <= 1:
        _one_by_one(hub, row_ids, delivery, result)
        return
    try:
        written = _write_chunk(hub, row_ids, delivery)
    except _PerRecord:
        _one_by_one(hub, row_ids, delivery, result)
        return
    except Exception as exc:
        if is_database_outage(exc):
            raise  # nothing committed: the task retries the chunk later
        log.info("chunk of %d rows failed (%s); splitting it", len(row_ids), type(exc).__name__)
        result.splits += 1
        half = len(row_ids) // 2
        _write_or_split(hub, row_ids[:half], delivery, result)
        _write_or_split(hub, row_ids[half:], delivery, result)
        return
    result.done.extend(written)


class _PerRecord(Exception):
    """Roll the chunk's claim back: it needs the per-record path (a sink elsewhere, deletions,
    a paused integration)."""


def _write_chunk(hub: Hub, row_ids: list[int], delivery: sync.Delivery) -> list[int]:
    """Claim, upsert and mark done in one transaction; the rows done."""
    with session_scope(hub.database_url) as session:
        claimed_at = utcnow()
        claims = chunks.claim_many(session, row_ids)
        if not claims:
            return []
        writable: dict[str, bool] = {}  # per integration
        for claim in claims:
            name = claim.integration
            if name not in writable:
                writable[name] = _batchable(hub, name)
            if not writable[name] or is_deletion(claim.payload):
                raise _PerRecord
        started = time.perf_counter()
        by_integration: dict[str, list[tuple[dict[str, object], str]]] = {}
        for claim in claims:
            integration = hub.integration(claim.integration)
            record = transform.apply(integration, claim.record_id, claim.payload)
            version = sync.queue.sink_version(claim.version, claim.row_id)
            by_integration.setdefault(claim.integration, []).append((record, version))
        connection = session.connection()
        for name, records in by_integration.items():
            sink = hub.sink(name)
            assert isinstance(sink, SqlSink)
            sink.upsert_many(records, connection=connection)
        ids = [claim.row_id for claim in claims]
        each_ms = (time.perf_counter() - started) * 1000 / len(ids)
        chunks.finish_many(
            session, ids, duration_ms=each_ms, token=delivery.token, started=claimed_at
        )
        return ids


def _batchable(hub: Hub, name: str) -> bool:
    """Whether the integration's rows can be written as a chunk (each row's own payload must
    also not be a deletion); asked once per integration a chunk."""
    return (
        hub.database_url.startswith("postgresql")
        and hub.sink_shares_database(name)
        and hub.integration(name).source.deletes is None
        and not hub.paused(name)
    )


def _one_by_one(hub: Hub, row_ids: list[int], delivery: sync.Delivery, result: BatchResult) -> None:
    for row_id in row_ids:
        result.single.append((row_id, sync.process_record(hub, row_id, delivery=delivery)))
