"""A first delivery on Postgres reads its row and writes it once (models/peek.py).

The done mark, sent with the sink's write, counts the attempt and names the holder; a write
that fails falls back to the written claim, so retries, dead letters and their counts are
what they were; a redelivery takes the written claim first, as crash counting needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from models import prepared, queue
from models.db import get_engine, session_scope
from pipeline.config import parse_config
from pipeline.delta import SourceRecord
from pipeline.errors import TransientError
from pipeline.hub import Hub
from pipeline.settings import settings_from_env
from pipeline.sinks.sql import SqlSink
from pipeline.sync import Delivery, process_record
from pipeline.timefmt import utcnow

FIRST = Delivery(token="T1", redelivered=False)


@pytest.fixture
def hub(pg_url: str, tmp_path: Path) -> Hub:
    settings = settings_from_env({"IHUB_DATABASE_URL": pg_url, "IHUB_HOME": str(tmp_path)})
    integration = {"source": {"url": "https://api.example.com/i"}, "sink": {"table": "t"}}
    config = parse_config({"integrations": {"items": integration}}, file="x", env={})
    return Hub(settings, config)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The query strings sent on the record path's connections, as text (not prepared)."""
    monkeypatch.setattr(prepared, "_enabled", [False])
    found: list[str] = []
    execute = prepared._execute

    def keep(connection: Any, sql: str, params: dict[str, Any]) -> prepared.Sent:
        found.append(" ".join(sql.split()))
        return execute(connection, sql, params)

    monkeypatch.setattr(prepared, "_execute", keep)
    return found


def stage(url: str, *values: int) -> list[int]:
    now = utcnow()
    records = [SourceRecord(f"r{i}", now, {"id": f"r{i}", "n": n}) for i, n in enumerate(values)]
    with session_scope(url) as session:
        return queue.stage(session, "items", None, records, due_in=300)


def row(url: str, row_id: int) -> dict[str, Any]:
    with get_engine(url).connect() as connection:
        found = connection.exec_driver_sql(
            "SELECT status, attempts, deliveries, claim_token, started_at IS NOT NULL AS started"
            " FROM ihub_records WHERE id = %(id)s",
            {"id": row_id},
        )
        return dict(found.one()._mapping)


def test_a_first_delivery_reads_the_row_and_writes_it_once(
    hub: Hub, pg_url: str, sent: list[str]
) -> None:
    [row_id] = stage(pg_url, 1)
    assert process_record(hub, row_id, delivery=FIRST).status == "done"
    sent_on_the_path = [s for s in sent if "ihub_records" in s]
    assert len(sent_on_the_path) == 2, sent_on_the_path
    read, write = sent_on_the_path
    assert read.startswith("SELECT") and "UPDATE" not in read
    assert write.count("UPDATE ihub_records") == 1 and "INSERT INTO t" in write
    assert row(pg_url, row_id) == {
        "status": "done",
        "attempts": 1,
        "deliveries": 0,
        "claim_token": "T1",
        "started": True,
    }
    assert process_record(hub, row_id, delivery=FIRST).status == "skipped"  # a duplicate
    assert row(pg_url, row_id)["attempts"] == 1


def test_a_redelivery_claims_in_a_write_of_its_own_first(
    hub: Hub, pg_url: str, sent: list[str]
) -> None:
    """A crash of the worker that held it must be countable: the row is processing, with its
    attempt, before the sink write starts."""
    [row_id] = stage(pg_url, 1)
    again = Delivery(token="T2", redelivered=True)
    assert process_record(hub, row_id, delivery=again).status == "done"
    claim, write = [s for s in sent if "ihub_records" in s]
    assert "UPDATE ihub_records SET status = 'processing'" in claim and "INSERT" not in claim
    assert "INSERT INTO t" in write
    assert row(pg_url, row_id)["attempts"] == 1


def test_a_refused_first_write_is_claimed_then_dead_lettered_with_one_attempt(
    hub: Hub, pg_url: str
) -> None:
    good, bad = stage(pg_url, 1, -1)
    assert process_record(hub, good, delivery=FIRST).status == "done"
    with get_engine(pg_url).begin() as connection:
        connection.exec_driver_sql("ALTER TABLE t ADD CONSTRAINT positive CHECK (n >= 0)")
    assert process_record(hub, bad, delivery=FIRST).status == "dead"
    assert row(pg_url, bad)["status"] == "dead" and row(pg_url, bad)["attempts"] == 1
    [letter] = queue.list_dead(pg_url)
    assert letter["record_id"] == "r1" and "check constraint" in letter["message"]
    with get_engine(pg_url).connect() as connection:
        written = connection.exec_driver_sql("SELECT id FROM t").scalars().all()
        done = connection.exec_driver_sql("SELECT sum(done) FROM ihub_rollups").scalar()
    assert written == ["r0"] and done == 1  # the failed write's done mark was rolled back


def test_a_transient_first_write_retries_and_the_retry_counts_its_attempt(
    hub: Hub, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    [row_id] = stage(pg_url, 1)
    upsert = SqlSink.upsert
    failures = [TransientError("target busy")]

    def busy_once(self: SqlSink, *args: Any, **kwargs: Any) -> bool:
        if failures:
            raise failures.pop()
        return upsert(self, *args, **kwargs)

    monkeypatch.setattr(SqlSink, "upsert", busy_once)
    outcome = process_record(hub, row_id, delivery=FIRST)
    assert outcome.status == "retry" and "target busy" in str(outcome.error)
    assert row(pg_url, row_id)["status"] == "retrying" and row(pg_url, row_id)["attempts"] == 1
    retry = Delivery(token="T1", redelivered=False)  # Celery's retry is a new message
    assert process_record(hub, row_id, delivery=retry).status == "done"
    assert row(pg_url, row_id)["attempts"] == 2


def test_only_a_hub_with_a_sink_in_its_database_reads_before_claiming(
    hub: Hub, pg_url: str, tmp_path: Path
) -> None:
    """A record whose sink is elsewhere takes the written claim anyway: no read before it."""
    assert hub.reads_before_claiming()
    rest = {"type": "rest", "url": "https://target.example.com/api/{id}"}
    integration = {"source": {"url": "https://api.example.com/i"}, "sink": rest}
    config = parse_config({"integrations": {"items": integration}}, file="x", env={})
    settings = settings_from_env({"IHUB_DATABASE_URL": pg_url, "IHUB_HOME": str(tmp_path)})
    assert not Hub(settings, config).reads_before_claiming()
