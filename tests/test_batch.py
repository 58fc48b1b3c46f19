"""Batched mode on Postgres, in process: each record of a chunk still ends on its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, text

from models import chunks, queue
from models.db import get_engine, session_scope
from models.schema import DeadLetter, StagedRecord
from pipeline.batch import process_batch
from pipeline.config import parse_config
from pipeline.delta import SourceRecord
from pipeline.hub import Hub
from pipeline.settings import settings_from_env
from pipeline.sync import Delivery, process_record
from pipeline.timefmt import version_string

NAME = "items"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
FIRST_DELIVERY = Delivery(worker="w1", token="chunk-1", redelivered=False)


def make_hub(url: str, home: Path, **integration: Any) -> Hub:
    settings = settings_from_env({"IHUB_DATABASE_URL": url, "IHUB_HOME": str(home)})
    body = {
        "source": {"url": "https://api.example.com/items"},
        "sink": {"table": "target_items"},
        "mode": "batched",
        "batch_size": 50,
        **integration,
    }
    return Hub(settings, parse_config({"integrations": {NAME: body}}, file="x", env={}))


def rec(record_id: str, seconds: float, **payload: Any) -> SourceRecord:
    return SourceRecord(record_id, T0 + timedelta(seconds=seconds), {"id": record_id, **payload})


def stage(url: str, records: list[SourceRecord]) -> list[int]:
    with session_scope(url) as session:
        return queue.stage(session, NAME, None, records, due_in=300)


def statuses(url: str, row_ids: list[int]) -> dict[int, str]:
    with session_scope(url) as session:
        query = select(StagedRecord.id, StagedRecord.status).where(StagedRecord.id.in_(row_ids))
        return {int(i): s for i, s in session.execute(query)}


def target(url: str) -> dict[str, dict[str, Any]]:
    with get_engine(url).connect() as connection:
        result = connection.execute(text("SELECT * FROM target_items")).mappings()
        return {str(r["id"]): dict(r) for r in result}


def test_a_clean_chunk_is_written_whole_and_every_row_done(pg_url: str, tmp_path: Path) -> None:
    """Forty rows in one chunk: all done, all in the target, no split."""
    hub = make_hub(pg_url, tmp_path)
    ids = stage(pg_url, [rec(f"r{i}", i, n=i) for i in range(40)])
    result = process_batch(hub, ids, delivery=FIRST_DELIVERY)
    assert (sorted(result.done), result.single, result.splits) == (ids, [], 0)
    assert set(statuses(pg_url, ids).values()) == {"done"}
    assert {k: v["n"] for k, v in target(pg_url).items()} == {f"r{i}": i for i in range(40)}


def test_one_poisoned_row_dies_alone_with_its_reason_and_the_rest_are_done(
    pg_url: str, tmp_path: Path
) -> None:
    """A NUL byte fails the chunk's upsert; split, 39 rows end done and the poisoned one dead
    with the driver's reason; requeued once fixed, it comes home."""
    hub = make_hub(pg_url, tmp_path)
    records = [rec(f"r{i}", i, name=f"ok {i}") for i in range(40)]
    records[17] = rec("r17", 17, name="bad\x00byte")
    ids = stage(pg_url, records)
    result = process_batch(hub, ids, delivery=FIRST_DELIVERY)
    poisoned = ids[17]
    found = statuses(pg_url, ids)
    assert found.pop(poisoned) == "dead"
    assert set(found.values()) == {"done"}
    assert result.count("done") == 39 and result.count("dead") == 1 and result.splits >= 1
    with session_scope(pg_url) as session:
        letter = session.scalars(
            select(DeadLetter).where(DeadLetter.record_row_id == poisoned)
        ).one()
        # the driver's own words, as the per-record path records them
        assert (letter.error_class, "NUL" in letter.message) == ("ValueError", True)
        assert letter.attempts == 1
    assert "r17" not in target(pg_url) and len(target(pg_url)) == 39

    requeued = queue.requeue_dead(pg_url, row_ids=[poisoned], actor="test")
    assert requeued == [poisoned]
    with session_scope(pg_url) as session:
        session.get(StagedRecord, poisoned).payload = '{"id": "r17", "name": "fixed"}'
    assert process_batch(hub, [poisoned], delivery=FIRST_DELIVERY).count("done") == 1
    assert target(pg_url)["r17"]["name"] == "fixed"


def test_duplicates_in_a_chunk_keep_the_newest_version(pg_url: str, tmp_path: Path) -> None:
    """Three versions of one record in one chunk, then an older one alone: the newest stays."""
    hub = make_hub(pg_url, tmp_path)
    [old] = stage(pg_url, [rec("a", 1, name="v1")])
    newer = stage(pg_url, [rec("a", 2, name="v2")]) + stage(pg_url, [rec("a", 3, name="v3")])
    others = stage(pg_url, [rec("b", 1, name="b1")])
    chunk = [*newer, *others]
    assert sorted(process_batch(hub, chunk, delivery=FIRST_DELIVERY).done) == sorted(chunk)
    assert target(pg_url)["a"]["name"] == "v3"
    assert target(pg_url)["a"]["_ihub_version"] == queue.sink_version(
        version_string(T0 + timedelta(seconds=3)), newer[1]
    )
    assert process_batch(hub, [old], delivery=FIRST_DELIVERY).count("done") == 1
    assert target(pg_url)["a"]["name"] == "v3"
    assert set(statuses(pg_url, [old, *chunk]).values()) == {"done"}


def test_finished_rows_in_a_chunk_are_left_alone(pg_url: str, tmp_path: Path) -> None:
    """A chunk delivered twice writes nothing the second time and changes no row."""
    hub = make_hub(pg_url, tmp_path)
    ids = stage(pg_url, [rec(f"r{i}", i) for i in range(5)])
    process_batch(hub, ids, delivery=FIRST_DELIVERY)
    before = target(pg_url)
    again = process_batch(hub, ids, delivery=FIRST_DELIVERY)
    assert again.done == [] and again.single == []
    assert target(pg_url) == before


def test_a_redelivered_chunk_runs_record_by_record(pg_url: str, tmp_path: Path) -> None:
    """A chunk whose worker was lost runs as single records, each claim counted on its own."""
    hub = make_hub(pg_url, tmp_path)
    ids = stage(pg_url, [rec(f"r{i}", i) for i in range(3)])
    redelivered = Delivery(worker="w2", token="chunk-1", redelivered=True)
    result = process_batch(hub, ids, delivery=redelivered)
    assert result.done == [] and [o.status for _, o in result.single] == ["done"] * 3


def test_per_record_path_writes_in_one_transaction_on_postgres(pg_url: str, tmp_path: Path) -> None:
    """A single record on Postgres: done, written, and a replay is skipped."""
    hub = make_hub(pg_url, tmp_path, mode="per-record")
    [row_id] = stage(pg_url, [rec("a", 1, name="x")])
    assert process_record(hub, row_id).status == "done"
    assert process_record(hub, row_id).status == "skipped"
    assert target(pg_url)["a"]["name"] == "x"


def test_a_chunk_finds_its_rows_by_id_whatever_the_statistics_say(
    pg_url: str, tmp_path: Path
) -> None:
    """Claim and done look a chunk's rows up by primary key, not through the status index.

    The table is never analysed here (a fast backfill outruns autovacuum), so the planner
    guesses that few rows are open: a status predicate it could serve from an index made it
    read every open row for each chunk. Each statement the chunk runs on ``ihub_records`` is
    explained, with its own parameters, in a transaction rolled back; sequential scans are
    off there, as the planner turns them down for a table of any size."""
    from sqlalchemy import event

    hub = make_hub(pg_url, tmp_path)
    ids = stage(pg_url, [rec(f"r{i}", i) for i in range(3000)])
    seen: list[tuple[str, Any]] = []

    def keep(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "ihub_records" in statement and "WHERE" in statement:
            seen.append((statement, parameters))

    engine = get_engine(pg_url)
    event.listen(engine, "before_cursor_execute", keep)
    try:
        assert len(process_batch(hub, ids[1000:1050], delivery=FIRST_DELIVERY).done) == 50
    finally:
        event.remove(engine, "before_cursor_execute", keep)
    assert seen, "the done mark went through SQLAlchemy"
    seen.append((chunks._CLAIM_PG, (ids[1050:1100],)))  # the claim: driver SQL on its cursor
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SET LOCAL enable_seqscan = off")
        for statement, parameters in seen:
            cursor.execute(f"EXPLAIN {statement}", parameters)
            plan = "\n".join(line for (line,) in cursor.fetchall())
            assert "ihub_records_pkey" in plan and "status_due" not in plan, plan
        raw.rollback()
    finally:
        raw.close()
