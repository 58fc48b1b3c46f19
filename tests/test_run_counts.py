"""A fetch run's counts: right beside other runs, and read from a range of the primary key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from models import queue, runs
from models.db import get_engine, session_scope
from models.schema import FetchRun
from pipeline.delta import SourceRecord

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def stage_run(url: str, name: str, ids: range, *, finish: bool = True) -> int:
    run_id = runs.start(url, name)
    records = [SourceRecord(f"r{i}", T0 + timedelta(seconds=i), {"id": f"r{i}"}) for i in ids]
    with session_scope(url) as session:
        queue.stage(session, name, run_id, records, due_in=300)
    if finish:
        runs.finish(url, run_id, status="ok")
    return run_id


def test_a_run_counts_its_own_rows_beside_earlier_and_later_runs(sqlite_url: str) -> None:
    first = stage_run(sqlite_url, "a", range(0, 30))
    second = stage_run(sqlite_url, "b", range(0, 20))
    running = stage_run(sqlite_url, "a", range(30, 35), finish=False)
    later = stage_run(sqlite_url, "b", range(20, 27))
    assert queue.run_counts(sqlite_url, first)["pending"] == 30
    assert queue.run_counts(sqlite_url, second)["pending"] == 20
    assert queue.run_counts(sqlite_url, running)["pending"] == 5  # no ceiling yet: rows up to now
    assert queue.run_counts(sqlite_url, later)["pending"] == 7


def test_a_run_from_before_the_bounds_is_counted_by_its_id_alone(sqlite_url: str) -> None:
    run_id = stage_run(sqlite_url, "a", range(0, 12))
    with session_scope(sqlite_url) as session:
        session.execute(update(FetchRun).values(row_floor=None, row_ceiling=None))
    assert queue.run_counts(sqlite_url, run_id)["pending"] == 12


def test_run_counts_read_a_range_of_the_primary_key(pg_url: str) -> None:
    """Not the table's history: by ``fetch_run_id`` alone, every count read every row."""
    stage_run(pg_url, "a", range(0, 2000))
    run_id = stage_run(pg_url, "a", range(2000, 2100))
    seen: list[tuple[str, object]] = []

    def keep(
        _conn: object, _cursor: object, statement: str, parameters: object, *_: object
    ) -> None:
        if "count(" in statement:
            seen.append((statement, parameters))

    from sqlalchemy import event

    engine = get_engine(pg_url)
    event.listen(engine, "before_cursor_execute", keep)
    try:
        assert queue.run_counts(pg_url, run_id)["pending"] == 100
    finally:
        event.remove(engine, "before_cursor_execute", keep)
    ((statement, parameters),) = seen
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {statement}", parameters)
        plan = "\n".join(line for (line,) in cursor.fetchall())
        assert "ihub_records_pkey" in plan, plan
        raw.rollback()
    finally:
        raw.close()
