"""The SQL sink's columns are ours: hostile field names on SQLite and Postgres.

Colliding names are refused naming both fields, ihub's own column names are reserved, new
columns are capped (the rest go to one JSON column), DDL errors surface, and a sink table may
not be one of ihub's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select, text

from models import queue
from models.db import get_engine, session_scope
from models.schema import DeadLetter
from pipeline.config import parse_config
from pipeline.delta import SourceRecord
from pipeline.errors import ConfigError, PermanentError
from pipeline.hub import Hub
from pipeline.settings import settings_from_env
from pipeline.sinks.columns import EXTRA_COLUMN, column_name
from pipeline.sinks.sql import SYNCED_COLUMN, VERSION_COLUMN, SqlSink
from pipeline.sync import process_record
from pipeline.timefmt import utcnow


def rows(url: str, table: str = "items") -> dict[str, dict[str, Any]]:
    with get_engine(url).connect() as connection:
        result = connection.execute(text(f'SELECT * FROM "{table}"')).mappings()
        return {str(r["id"]): dict(r) for r in result}


def columns(url: str, table: str = "items") -> list[str]:
    return [c["name"] for c in inspect(get_engine(url)).get_columns(table)]


def v(n: int) -> str:
    return f"2024-05-01T12:00:{n:02d}.000000Z#{n:012d}"


COLLIDING = [("a_b", "a-b"), ("a_b", "a b"), ("a-b", "a b"), ("name", "Name"), ("id", "ID")]


@pytest.mark.parametrize(("first", "second"), COLLIDING)
def test_colliding_fields_in_one_record_are_refused_naming_both(
    db_url: str, first: str, second: str
) -> None:
    """Two fields of one record reducing to one column: PermanentError naming both, no write."""
    sink = SqlSink(db_url, "items", "id")
    record = {"id": "r1", first: 1, second: 2}  # with ("id", "ID"): the key's own column
    with pytest.raises(PermanentError) as caught:
        sink.upsert(record, v(1))
    message = str(caught.value)
    assert repr(first) in message and repr(second) in message, message
    assert not inspect(get_engine(db_url)).has_table("items") or rows(db_url) == {}


@pytest.mark.parametrize(("first", "second"), COLLIDING[:4])
def test_colliding_fields_across_records_are_refused_naming_both(
    db_url: str, first: str, second: str
) -> None:
    """A field reducing to a column another field claimed earlier is refused, not merged."""
    sink = SqlSink(db_url, "items", "id")
    assert sink.upsert({"id": "r1", first: "one"}, v(1)) is True
    later = SqlSink(db_url, "items", "id")  # another worker, knowing nothing yet
    with pytest.raises(PermanentError) as caught:
        later.upsert({"id": "r2", second: "two"}, v(2))
    assert repr(first) in str(caught.value) and repr(second) in str(caught.value)
    assert set(rows(db_url)) == {"r1"}
    assert rows(db_url)["r1"][column_name(first)] == "one"
    assert later.upsert({"id": "r3", first: "three"}, v(3)) is True  # the owner still writes
    assert sorted(c.lower() for c in columns(db_url)).count(column_name(first).lower()) == 1


def test_colliding_record_is_a_dead_letter_and_the_next_is_done(
    db_url: str, tmp_path: Path
) -> None:
    """Through process_record: the colliding record is dead with its reason, the next lands."""
    settings = settings_from_env({"IHUB_DATABASE_URL": db_url, "IHUB_HOME": str(tmp_path)})
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
    records = [
        SourceRecord("bad", now, {"id": "bad", "a-b": 1, "a_b": 2}),
        SourceRecord("good", now, {"id": "good", "a_b": 3}),
    ]
    with session_scope(db_url) as session:
        bad, good = queue.stage(session, "items", None, records, due_in=300)
    assert process_record(hub, bad).status == "dead"
    assert process_record(hub, good).status == "done"
    with session_scope(db_url) as session:
        [letter] = session.scalars(select(DeadLetter).where(DeadLetter.record_row_id == bad))
        assert "'a-b'" in letter.message and "'a_b'" in letter.message
    assert rows(db_url, "t")["good"]["a_b"] == 3


def test_field_named_like_ihub_column_cannot_block_the_table_or_overwrite_it(
    db_url: str,
) -> None:
    """A first record with _ihub_* fields creates the table; ihub's columns keep ihub's values."""
    sink = SqlSink(db_url, "items", "id")
    hostile = {
        "id": "r1",
        SYNCED_COLUMN: "not a time",
        VERSION_COLUMN: "9999",
        "_IHUB_Deleted": True,
        EXTRA_COLUMN: "x",
        "name": "ok",
    }
    assert sink.upsert(hostile, v(1)) is True
    row = rows(db_url)["r1"]
    assert row[VERSION_COLUMN] == v(1)
    assert row[SYNCED_COLUMN] != "not a time"
    assert row["name"] == "ok"
    assert json.loads(row[EXTRA_COLUMN]) == {
        SYNCED_COLUMN: "not a time",
        VERSION_COLUMN: "9999",
        "_IHUB_Deleted": True,
        EXTRA_COLUMN: "x",
    }
    assert sink.upsert({"id": "r1", VERSION_COLUMN: "0"}, v(2)) is True  # the guard still works
    assert rows(db_url)["r1"][VERSION_COLUMN] == v(2)


def test_new_columns_are_capped_and_the_rest_go_to_one_json_column(db_url: str) -> None:
    """Past max_columns the fields of a record land in _ihub_extra; the table stops growing."""
    sink = SqlSink(db_url, "items", "id", max_columns=3)
    first = {"id": "r1", **{f"f{i}": i for i in range(6)}}
    assert sink.upsert(first, v(1)) is True
    data = [c for c in columns(db_url) if not c.startswith("_ihub_") and c != "id"]
    assert data == ["f0", "f1", "f2"]
    row = rows(db_url)["r1"]
    assert json.loads(row[EXTRA_COLUMN]) == {"f3": 3, "f4": 4, "f5": 5}
    # a stranger's flood of new names later changes no schema either
    flood = {"id": "r2", **{f"new{i}": i for i in range(50)}}
    assert SqlSink(db_url, "items", "id", max_columns=3).upsert(flood, v(2)) is True
    assert len(columns(db_url)) == len(data) + 4  # id, version, synced, extra
    assert json.loads(rows(db_url)["r2"][EXTRA_COLUMN])["new49"] == 49


def test_ddl_error_is_raised_not_swallowed(db_url: str) -> None:
    """An ALTER TABLE that fails (here: the target is a view) is an error naming the table."""
    with get_engine(db_url).begin() as connection:
        connection.execute(
            text(
                f"CREATE VIEW items AS SELECT 'x' AS id, 'v' AS {VERSION_COLUMN}, "
                f"'s' AS {SYNCED_COLUMN}"
            )
        )
    with pytest.raises(PermanentError, match='sink items: ALTER TABLE "items" ADD COLUMN'):
        SqlSink(db_url, "items", "id").upsert({"id": "r1", "colour": "red"}, v(1))


@pytest.mark.parametrize("table", ["ihub_records", "IHUB_tokens", "_ihub_columns"])
def test_sink_table_named_like_ihub_tables_is_refused(table: str) -> None:
    """Config validation refuses a sink table of ihub's own, naming file and key."""
    sink = {"table": table}
    raw = {"integrations": {"x": {"source": {"url": "https://a.example/"}, "sink": sink}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, file="hub.yaml", env={})
    assert "hub.yaml: integrations.x.sink.table:" in str(caught.value)


def test_sink_key_named_like_an_ihub_column_is_refused() -> None:
    """The sink key may not be one of ihub's own columns nor an unsafe name."""
    for key in ("_ihub_version", "a-b"):
        sink = {"table": "t", "key": key}
        raw = {"integrations": {"x": {"source": {"url": "https://a.example/"}, "sink": sink}}}
        with pytest.raises(ConfigError, match=r"integrations\.x\.sink\.key"):
            parse_config(raw, file="hub.yaml", env={})


def test_table_made_before_the_mapping_keeps_taking_its_fields(db_url: str) -> None:
    """An upgrade dead-letters nothing that wrote before: the first field reducing to an old
    column adopts it ("first name" into first_name); a second spelling is then refused."""
    with get_engine(db_url).begin() as connection:
        connection.execute(
            text(
                f'CREATE TABLE items (id TEXT PRIMARY KEY, "{VERSION_COLUMN}" TEXT NOT NULL, '
                f'"{SYNCED_COLUMN}" TEXT, first_name TEXT, age BIGINT)'
            )
        )
    sink = SqlSink(db_url, "items", "id", max_columns=3)
    assert sink.upsert({"id": "r1", "first name": "Ada", "age": 36, "town": "X"}, v(1)) is True
    row = rows(db_url)["r1"]
    assert (row["first_name"], row["age"], row["town"]) == ("Ada", 36, "X")
    # the cap counts the old columns: a fourth data field goes to _ihub_extra
    assert sink.upsert({"id": "r2", "first name": "Bo", "pet": "cat"}, v(2)) is True
    assert json.loads(rows(db_url)["r2"][EXTRA_COLUMN]) == {"pet": "cat"}
    with pytest.raises(PermanentError, match="'first name' and 'first_name'"):
        SqlSink(db_url, "items", "id").upsert({"id": "r3", "first_name": "Cy"}, v(3))
