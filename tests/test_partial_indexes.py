"""ihub_records' partial indexes (migration 0007): their predicates keep done rows out of the
open-rows and dead-rows indexes, and the queries they are for use them, on both dialects."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, event, text

from models import queue, retention, runs
from models.db import get_engine, session_scope
from models.values import SourceRecord

T0 = datetime(2024, 1, 1, tzinfo=UTC)
ROWS = 300


def stage(url: str, count: int = ROWS) -> list[int]:
    run_id = runs.start(url, "a")
    records = [
        SourceRecord(f"r{i}", T0 + timedelta(seconds=i), {"id": f"r{i}"}) for i in range(count)
    ]
    with session_scope(url) as session:
        ids = queue.stage(session, "a", run_id, records, due_in=300)
    runs.finish(url, run_id, status="ok")
    return ids


@contextmanager
def statements(url: str, marker: str) -> Iterator[list[tuple[str, Any]]]:
    """The statements sent to ``url`` whose text holds ``marker``, with their parameters."""
    seen: list[tuple[str, Any]] = []

    def keep(_conn: object, _cursor: object, statement: str, parameters: Any, *_: object) -> None:
        if marker in statement:
            seen.append((statement, parameters))

    engine = get_engine(url)
    event.listen(engine, "before_cursor_execute", keep)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", keep)


def plan(url: str, statement: str, parameters: Any) -> str:
    """The plan of ``statement``; on Postgres with sequential scans priced out, so the plan
    names whichever index the planner is allowed to use (the table is never analysed here)."""
    raw = get_engine(url).raw_connection()
    try:
        cursor = raw.cursor()
        if url.startswith("sqlite"):
            cursor.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
            found = "\n".join(str(row[-1]) for row in cursor.fetchall())
        else:
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute(f"EXPLAIN {statement}", parameters)
            found = "\n".join(line for (line,) in cursor.fetchall())
        raw.rollback()
        return found
    finally:
        raw.close()


def only_plan(url: str, seen: list[tuple[str, Any]]) -> str:
    assert seen, "the statement was not sent"
    return plan(url, *seen[0])


def test_republishing_reads_the_open_rows_index(db_url: str) -> None:
    stage(db_url)
    with statements(db_url, "due_at <") as seen:
        queue.republish_due(db_url, grace=60, overdue=-3600)
    assert "ix_ihub_records_open_due" in only_plan(db_url, seen)


def test_a_rejected_record_is_looked_up_in_the_dead_rows_index(db_url: str) -> None:
    with session_scope(db_url) as session:
        assert queue.stage_dead(session, "a", None, "bad", {"x": 1}, "unparseable")
    with statements(db_url, "record_id") as seen, session_scope(db_url) as session:
        assert not queue.stage_dead(session, "a", None, "bad", {"x": 1}, "unparseable")
    lookups = [s for s in seen if s[0].lstrip().upper().startswith("SELECT")]
    assert "ix_ihub_records_dead_record" in only_plan(db_url, lookups)


def test_a_window_of_finish_times_reads_the_finished_rows_index(db_url: str) -> None:
    """``finished_at < :cutoff`` (retention, the dashboard's windows) implies the index's
    ``finished_at IS NOT NULL`` on both dialects, with the bound as a parameter."""
    ids = stage(db_url, 20)
    finish_all(db_url, ids)
    cutoff = datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=1)
    window = "SELECT id FROM ihub_records WHERE finished_at < {}"
    if db_url.startswith("sqlite"):
        found = plan(db_url, window.format("?"), (cutoff.isoformat(" "),))
    else:
        found = plan(db_url, window.format("%(cutoff)s"), {"cutoff": cutoff})
    assert "ix_ihub_records_finished" in found, found
    assert retention.prune(db_url, older_than=timedelta(seconds=-60)) == 20


def finish_all(url: str, ids: list[int]) -> None:
    with session_scope(url) as session:
        session.execute(
            text("UPDATE ihub_records SET status = 'done', finished_at = :now WHERE id IN :ids")
            .bindparams(now=datetime.now(UTC).replace(tzinfo=None))
            .bindparams(bindparam("ids", ids, expanding=True))
        )


def predicates(url: str) -> dict[str, str | None]:
    """Each index of ihub_records and its predicate (None for a whole-table index)."""
    with session_scope(url) as session:
        if url.startswith("sqlite"):
            rows = session.execute(
                text(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index'"
                    " AND tbl_name = 'ihub_records' AND sql IS NOT NULL"
                )
            )
            return {
                name: sql.split(" WHERE ", 1)[1] if " WHERE " in sql else None for name, sql in rows
            }
        rows = session.execute(
            text(
                "SELECT c.relname, pg_get_expr(i.indpred, i.indrelid) FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE i.indrelid = 'ihub_records'::regclass AND NOT i.indisprimary"
            )
        )
        return {name: predicate for name, predicate in rows}


def test_the_migrated_indexes_keep_only_the_rows_they_are_for(db_url: str) -> None:
    """Open rows, dead rows, finished rows: a done mark, most rows' last write, adds an entry
    to the finished index alone (autogenerate compares names and columns, not predicates)."""
    found = predicates(db_url)
    assert set(found) == {
        "ix_ihub_records_open_due",
        "ix_ihub_records_dead_record",
        "ix_ihub_records_integration_status",
        "ix_ihub_records_finished",
    }
    assert found["ix_ihub_records_integration_status"] is None  # the status page counts all
    open_due = found["ix_ihub_records_open_due"] or ""
    assert all(f"'{s}'" in open_due for s in ("pending", "processing", "retrying")), open_due
    assert "'done'" not in open_due and "'dead'" not in open_due
    assert "'dead'" in (found["ix_ihub_records_dead_record"] or "")
    assert "finished_at IS NOT NULL" in (found["ix_ihub_records_finished"] or "")
