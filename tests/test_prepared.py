"""Prepared statements on a record's path (models/prepared.py), on a real Postgres.

A statement is prepared once per connection, in the query string of its first EXECUTE; a
server that lost the statements, or a query string that failed halfway, leaves the next one
working; they run generic plans; IHUB_PG_PREPARE=0 sends plain text; and a record processed
with them counts the same duration in its row and in the minute's rollup (the done mark's
parameter types).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg2
import pytest

from models import driver, prepared, queue
from models.db import get_engine, session_scope
from models.driver import DriverConnection
from models.prepared import Statement
from pipeline.config import parse_config
from pipeline.delta import SourceRecord
from pipeline.hub import Hub
from pipeline.settings import settings_from_env
from pipeline.sync import process_record
from pipeline.timefmt import utcnow

UPSERT = Statement(
    "INSERT INTO pairs (k, n) VALUES (%(k)s, %(n)s)"
    " ON CONFLICT (k) DO UPDATE SET n = excluded.n WHERE pairs.n < excluded.n",
    {"k": "a", "n": 1},
)


def query(connection: DriverConnection, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with connection.raw.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def statements(connection: DriverConnection) -> dict[str, int]:
    """The statements this connection's server session holds: name -> executions."""
    rows = query(
        connection, "SELECT name, generic_plans + custom_plans FROM pg_prepared_statements"
    )
    return {name: int(count) for name, count in rows}


def value(connection: DriverConnection, k: str = "a") -> Any:
    rows = query(connection, "SELECT n FROM pairs WHERE k = %(k)s", {"k": k})
    return rows[0][0] if rows else None


@pytest.fixture
def connection(pg_url: str) -> Any:
    with driver.connection(pg_url) as connection:
        query(connection, "CREATE TABLE pairs (k text PRIMARY KEY, n bigint)")
        yield connection


def test_a_statement_is_prepared_once_and_executed_after(connection: DriverConnection) -> None:
    for n in (1, 2, 3):
        result = prepared.send(connection, [Statement(UPSERT.sql, {"k": "a", "n": n})])
        assert result.rowcount == 1
    assert list(statements(connection).values()) == [3]  # one statement, three executions
    assert value(connection) == 3
    guarded = prepared.send(connection, [Statement(UPSERT.sql, {"k": "a", "n": 2})])
    assert guarded.rowcount == 0 and value(connection) == 3  # the guard is in the statement


def test_statements_the_server_lost_are_prepared_again(connection: DriverConnection) -> None:
    prepared.send(connection, [UPSERT])
    query(connection, "DEALLOCATE ALL")  # what DISCARD ALL or a pooler does
    result = prepared.send(connection, [Statement(UPSERT.sql, {"k": "a", "n": 5})])
    assert result.rowcount == 1 and value(connection) == 5
    assert len(statements(connection)) == 1


def test_a_failed_query_string_leaves_the_connection_working(connection: DriverConnection) -> None:
    """PREPARE is not rolled back with its query string: the next send must not collide with
    what the failed one left on the server."""
    failing = Statement("SELECT 1 / %(zero)s", {"zero": 0}, {"zero": "integer"})
    with pytest.raises(psycopg2.Error):
        prepared.send(connection, [UPSERT, failing])
    assert value(connection) is None  # one transaction: the upsert before it was undone
    result = prepared.send(connection, [UPSERT, Statement(failing.sql, {"zero": 1})])
    assert result.row == (1,) and value(connection) == 1


def test_a_connection_lost_mid_send_raises_as_a_lost_connection(pg_url: str) -> None:
    """A Postgres restart cuts the connection: the caller sees the driver's lost connection
    (retried as an outage), the connection is dropped, and the next use gets a new one."""
    from pipeline.spool import is_database_outage

    plus_one = "SELECT %(a)s::int + 1"
    with driver.connection(pg_url) as connection:
        assert prepared.send(connection, [Statement(plus_one, {"a": 1})]).row == (2,)
        [(backend,)] = query(connection, "SELECT pg_backend_pid()")
    with get_engine(pg_url).connect() as killer:
        killer.exec_driver_sql("SELECT pg_terminate_backend(%(p)s)", {"p": backend})
    # no ping: it was idle for less than a second
    with pytest.raises(psycopg2.Error) as lost, driver.connection(pg_url) as connection:
        prepared.send(connection, [Statement(plus_one, {"a": 1})])
    assert is_database_outage(lost.value)
    with driver.connection(pg_url) as connection:  # a new connection, its statements prepared
        assert prepared.send(connection, [Statement(plus_one, {"a": 2})]).row == (3,)
        [(again,)] = query(connection, "SELECT pg_backend_pid()")
    assert again != backend


def test_an_idle_connection_the_server_dropped_is_replaced_before_use(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After ``PING_AFTER_IDLE`` a kept connection is pinged first: a restart in between costs
    a reconnect, not a failed record."""
    with driver.connection(pg_url) as connection:
        [(backend,)] = query(connection, "SELECT pg_backend_pid()")
        held = connection
    with get_engine(pg_url).connect() as killer:
        killer.exec_driver_sql("SELECT pg_terminate_backend(%(p)s)", {"p": backend})
    monkeypatch.setattr(driver, "PING_AFTER_IDLE", 0.0)
    held.idle_since -= 1.0
    with driver.connection(pg_url) as connection:
        assert prepared.send(connection, [Statement("SELECT 1", {})]).row == (1,)
        assert connection is not held


def test_prefix_runs_in_the_same_transaction(connection: DriverConnection) -> None:
    result = prepared.send(
        connection,
        [Statement("SELECT current_setting('synchronous_commit')", {})],
        prefix="SET LOCAL synchronous_commit = off",
    )
    assert result.row == ("off",)
    [(after,)] = query(connection, "SELECT current_setting('synchronous_commit')")
    assert after == "on"  # SET LOCAL ended with the query string's transaction


def test_turned_off_sends_text(
    connection: DriverConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prepared, "_enabled", [False])
    for n in (1, 2):
        prepared.send(connection, [Statement(UPSERT.sql, {"k": "a", "n": n})])
    assert statements(connection) == {} and value(connection) == 2


def test_a_record_counts_the_same_duration_in_its_row_and_its_rollup(
    pg_url: str, tmp_path: Path
) -> None:
    """The done mark's duration is a parameter used twice (the row's, the rollup's sum): it
    must stay a float in both, on the generic plan the session runs from the first execution
    (the parameter's type is declared: that plan cannot take it from a value)."""
    assert process_eight(pg_url, tmp_path) == ["done"] * 8
    with get_engine(pg_url).connect() as connection:
        durations = connection.exec_driver_sql(
            "SELECT count(*), sum(duration_ms) FROM ihub_records WHERE status = 'done'"
        ).one()
        rolled = connection.exec_driver_sql(
            "SELECT sum(done), sum(duration_count), sum(duration_sum_ms) FROM ihub_rollups"
        ).one()
        written = connection.exec_driver_sql("SELECT count(*) FROM t").scalar()
    assert durations[0] == 8 and rolled[0] == 8 and rolled[1] == 8 and written == 8
    assert durations[1] > 0 and rolled[2] == pytest.approx(durations[1])
    assert durations[1] != round(durations[1])  # not cut to whole milliseconds


def test_a_record_path_statement_runs_its_generic_plan(pg_url: str, tmp_path: Path) -> None:
    """Left to choose, the server planned the done mark afresh at every execution (its
    generic estimate for ``id = ANY(...)`` never beat a custom plan's): the session that
    prepares is set to generic plans."""
    assert process_eight(pg_url, tmp_path) == ["done"] * 8
    with driver.connection(pg_url) as connection:
        plans = query(
            connection,
            "SELECT name, generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE name LIKE 'ihub_%%'",
        )
        mode = query(connection, "SHOW plan_cache_mode")
    assert len(plans) >= 2, plans  # the read of a waiting row; the done mark
    assert all(custom == 0 and generic > 0 for _, generic, custom in plans), plans
    assert mode == [("force_generic_plan",)]


def process_eight(pg_url: str, tmp_path: Path) -> list[str]:
    """Eight records staged and processed one by one into a table of ``pg_url``: their
    outcomes."""
    settings = settings_from_env({"IHUB_DATABASE_URL": pg_url, "IHUB_HOME": str(tmp_path)})
    config = parse_config(
        {
            "integrations": {
                "items": {"source": {"url": "https://api.example.com/i"}, "sink": {"table": "t"}}
            }
        },
        file="x",
        env={},
    )
    hub = Hub(settings, config)
    now = utcnow()
    records = [SourceRecord(f"r{i}", now, {"id": f"r{i}", "n": i}) for i in range(8)]
    with session_scope(pg_url) as session:
        row_ids = queue.stage(session, "items", None, records, due_in=300)
    return [process_record(hub, row_id).status for row_id in row_ids]


def test_the_setting_reaches_the_process(tmp_path: Path) -> None:
    """IHUB_PG_PREPARE=0 (for a transaction-pooling PgBouncer) is the hub's to apply."""
    config = parse_config({"integrations": {}}, file="x", env={})
    try:
        Hub(settings_from_env({"IHUB_HOME": str(tmp_path), "IHUB_PG_PREPARE": "0"}), config)
        assert prepared.enabled() is False
        Hub(settings_from_env({"IHUB_HOME": str(tmp_path)}), config)
        assert prepared.enabled() is True
    finally:
        prepared.use(True)


def test_a_sink_column_altered_under_a_running_worker_takes_the_new_type(pg_url: str) -> None:
    """The sink's upsert is sent as text beside the prepared done mark: after its owner
    widens a column, the next value lands as it is, not coerced to the old type."""
    from models import finishing
    from pipeline.sinks.sql import SqlSink

    sink = SqlSink(pg_url, "items", "id")
    with session_scope(pg_url) as session:
        first, second = queue.stage(
            session,
            "items",
            None,
            [SourceRecord(key, utcnow(), {"id": key}) for key in ("a", "b")],
            due_in=300,
        )
    assert sink.upsert({"id": "a", "n": 1}, "v1", then=finishing.done_then(first, 1.0))
    with get_engine(pg_url).begin() as connection:
        connection.exec_driver_sql("ALTER TABLE items ALTER COLUMN n TYPE double precision")
    assert sink.upsert({"id": "b", "n": 1.5}, "v1", then=finishing.done_then(second, 1.0))
    with get_engine(pg_url).connect() as connection:
        n = connection.exec_driver_sql("SELECT n FROM items WHERE id = 'b'").scalar()
        done = connection.exec_driver_sql(
            "SELECT count(*) FROM ihub_records WHERE status = 'done'"
        ).scalar()
    assert n == 1.5 and done == 2
