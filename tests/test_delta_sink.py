"""Watermark and time formats (pure), the SQL sink on SQLite and Postgres, the staged queue.

No workers: queue transitions and ``process_record`` are called directly.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, inspect, select, text

from models import queue
from models.db import get_engine, session_scope
from models.schema import DeadLetter, RecordStatus, StagedRecord
from pipeline.config import parse_config
from pipeline.delta import SourceRecord, Watermark, advance, lower_bound
from pipeline.errors import PermanentError
from pipeline.hub import Hub
from pipeline.settings import settings_from_env
from pipeline.sinks.sql import SYNCED_COLUMN, VERSION_COLUMN, SqlSink
from pipeline.sync import process_record
from pipeline.timefmt import format_time, from_version_string, parse_time, version_string

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
AWARE = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def rec(record_id: str, seconds: float, **payload: Any) -> SourceRecord:
    return SourceRecord(record_id, at(seconds), {"id": record_id, **payload})


# --- Watermark ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        (Watermark(at(0), "z"), Watermark(at(1), "a")),
        (Watermark(at(0), "a"), Watermark(at(0), "b")),
        (Watermark(at(0), ""), Watermark(at(0), "a")),
        (Watermark(at(0), "10"), Watermark(at(0), "9")),
        (Watermark(at(-0.000001), "b"), Watermark(at(0), "a")),
    ],
    ids=["time_first", "then_id", "empty_id_lowest", "id_is_text", "microsecond"],
)
def test_watermark_orders_by_updated_then_id(lower: Watermark, higher: Watermark) -> None:
    """Watermarks compare by updated instant first, then by id as text."""
    assert lower < higher
    assert max(lower, higher) == higher


def test_watermark_text_round_trip() -> None:
    """to_text/from_text keep the instant (to the microsecond) and id; no text means None."""
    mark = Watermark(at(0.123456), "r-1")
    assert Watermark.from_text(*mark.to_text()) == mark
    assert mark.to_text() == ("2024-05-01T12:00:00.123456Z", "r-1")
    assert Watermark.from_text(None, "x") is None
    assert Watermark.from_text("", "x") is None
    assert Watermark.from_text("2024-05-01T12:00:00.000000Z", None) == Watermark(at(0), "")


@pytest.mark.parametrize(
    ("mark", "lookback", "expected"),
    [
        (None, timedelta(seconds=30), None),
        (Watermark(at(100), "a"), timedelta(seconds=30), at(70)),
        (Watermark(at(100), "a"), timedelta(0), at(100)),
    ],
    ids=["full_load", "lookback", "no_lookback"],
)
def test_lower_bound(
    mark: Watermark | None, lookback: timedelta, expected: datetime | None
) -> None:
    """The next fetch starts lookback before the watermark; no watermark means a full load."""
    assert lower_bound(mark, lookback) == expected


@pytest.mark.parametrize(
    ("mark", "records", "expected"),
    [
        (None, [], None),
        (None, [rec("b", 5), rec("a", 9), rec("c", 9)], Watermark(at(9), "c")),
        (Watermark(at(50), "m"), [], Watermark(at(50), "m")),
        (Watermark(at(50), "m"), [rec("a", 10), rec("z", 50)], Watermark(at(50), "z")),
        (Watermark(at(50), "m"), [rec("a", 10), rec("b", 50)], Watermark(at(50), "m")),
        (Watermark(at(50), "m"), [rec("a", 60)], Watermark(at(60), "a")),
    ],
    ids=["empty", "first_page", "empty_page", "same_instant_higher_id", "older", "newer"],
)
def test_advance(
    mark: Watermark | None, records: list[SourceRecord], expected: Watermark | None
) -> None:
    """The watermark becomes the greatest (updated, id) seen, never an older one."""
    assert advance(mark, records) == expected


@settings(max_examples=100, deadline=None, database=None)
@given(
    start=st.none() | st.tuples(AWARE, st.text(max_size=4)),
    records=st.lists(st.tuples(st.text(max_size=4), AWARE), max_size=8),
)
def test_advance_never_moves_backwards(
    start: tuple[datetime, str] | None, records: list[tuple[str, datetime]]
) -> None:
    """advance() is >= the old watermark and >= every record staged."""
    mark = Watermark(*start) if start else None
    page = [SourceRecord(i, t, {}) for i, t in records]
    moved = advance(mark, page)
    if mark is None and not page:
        assert moved is None
        return
    assert moved is not None
    assert mark is None or moved >= mark
    assert all(moved >= r.key for r in page)


# --- timefmt --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fmt", "tz", "expected"),
    [
        ("2024-05-01T12:00:00Z", "iso", "UTC", at(0)),
        ("2024-05-01T12:00:00.250Z", "iso", "UTC", at(0.25)),
        ("2024-05-01T12:00:00.123456Z", "iso", "UTC", at(0.123456)),
        ("2024-05-01T14:00:00+02:00", "iso", "UTC", at(0)),
        ("2024-05-01T07:00:00.5-05:00", "iso", "UTC", at(0.5)),
        ("2024-05-01T12:00:00", "iso", "UTC", at(0)),
        ("2024-05-01T14:00:00", "iso", "Europe/Berlin", at(0)),
        ("2024-05-01 14:00:00", "datetime", "Europe/Berlin", at(0)),
        ("2024-05-01 08:00:00", "datetime", "America/New_York", at(0)),
        ("2024-01-01 00:00:00", "datetime", "Asia/Tokyo", datetime(2023, 12, 31, 15, tzinfo=UTC)),
        (" 2024-05-01 12:00:00 ", "datetime", "UTC", at(0)),
        (1714564800, "epoch", "UTC", at(0)),
        ("1714564800", "epoch", "UTC", at(0)),
        (1714564800.5, "epoch", "UTC", at(0.5)),
        (1714564800250, "epoch_ms", "UTC", at(0.25)),
        ("1714564800250", "epoch_ms", "UTC", at(0.25)),
        (1714564800, "iso", "UTC", at(0)),
    ],
    ids=[
        "iso_z",
        "iso_ms",
        "iso_us",
        "iso_offset",
        "iso_neg_offset_fraction",
        "iso_naive_utc",
        "iso_naive_zone",
        "datetime_berlin",
        "datetime_new_york",
        "datetime_tokyo_day_before",
        "datetime_padded",
        "epoch_int",
        "epoch_str",
        "epoch_float",
        "epoch_ms_int",
        "epoch_ms_str",
        "number_given_as_iso",
    ],
)
def test_parse_time(value: object, fmt: str, tz: str, expected: datetime) -> None:
    """Each source format (and zone for naive values) parses to the same aware UTC instant."""
    parsed = parse_time(value, fmt, tz=tz)  # type: ignore[arg-type]
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize("value", [None, "", "yesterday", "2024-13-01T00:00:00Z"])
def test_parse_time_rejects_missing_and_garbage(value: object) -> None:
    """A missing or unparseable timestamp is a ValueError."""
    with pytest.raises(ValueError):
        parse_time(value)


@pytest.mark.parametrize(
    ("fmt", "tz", "expected"),
    [
        ("iso", "UTC", "2024-05-01T12:00:00Z"),
        ("iso", "Europe/Berlin", "2024-05-01T14:00:00+02:00"),
        ("datetime", "UTC", "2024-05-01 12:00:00"),
        ("datetime", "America/New_York", "2024-05-01 08:00:00"),
        ("epoch", "UTC", "1714564800"),
        ("epoch_ms", "UTC", "1714564800000"),
    ],
)
def test_format_time(fmt: str, tz: str, expected: str) -> None:
    """format_time writes an instant the way each source format expects it."""
    assert format_time(at(0), fmt, tz=tz) == expected  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None, database=None)
@given(
    moment=AWARE,
    fmt=st.sampled_from(["iso", "datetime", "epoch", "epoch_ms"]),
    tz=st.sampled_from(["UTC", "Europe/Berlin", "Asia/Kolkata", "America/Sao_Paulo"]),
)
def test_format_then_parse_round_trips(moment: datetime, fmt: str, tz: str) -> None:
    """parse_time(format_time(t)) gives t back, to each format's resolution."""
    resolution = {
        "iso": timedelta(microseconds=1),
        "datetime": timedelta(seconds=1),
        "epoch": timedelta(seconds=1),
        "epoch_ms": timedelta(milliseconds=1),
    }[fmt]
    if fmt == "datetime":
        # a local wall time inside a DST fold is ambiguous; only compare unambiguous instants
        local = moment.astimezone(ZoneInfo(tz))
        if local.replace(fold=1).utcoffset() != local.replace(fold=0).utcoffset():
            return
    back = parse_time(format_time(moment, fmt, tz=tz), fmt, tz=tz)  # type: ignore[arg-type]
    assert back.tzinfo is UTC
    assert timedelta(0) <= moment - back < resolution  # truncated, never rounded up


@settings(max_examples=150, deadline=None, database=None)
@given(a=AWARE, b=AWARE)
def test_version_string_sorts_in_time_order(a: datetime, b: datetime) -> None:
    """Version strings compare as text exactly as their instants compare in time."""
    va, vb = version_string(a), version_string(b)
    assert (va < vb) == (a < b)
    assert (va == vb) == (a == b)
    assert from_version_string(va) == a


def test_version_string_normalises_zones() -> None:
    """The same instant in two zones has one version string."""
    berlin = at(0).astimezone(timezone(timedelta(hours=2)))
    assert version_string(berlin) == version_string(at(0)) == "2024-05-01T12:00:00.000000Z"


# --- SqlSink on SQLite and Postgres ---------------------------------------------------------


def rows(url: str, table: str) -> dict[str, dict[str, Any]]:
    with get_engine(url).connect() as connection:
        result = connection.execute(text(f'SELECT * FROM "{table}"')).mappings()
        return {str(r["id"]): dict(r) for r in result}


def v(n: int) -> str:
    return queue.sink_version(version_string(at(n)), n)


def test_sink_creates_table(db_url: str) -> None:
    """The first upsert creates the table: key, version and sync columns plus the fields."""
    assert not inspect(get_engine(db_url)).has_table("items")
    assert SqlSink(db_url, "items", "id").upsert({"id": 1, "name": "a", "n": 2}, v(1)) is True
    columns = {c["name"] for c in inspect(get_engine(db_url)).get_columns("items")}
    assert columns == {"id", "name", "n", VERSION_COLUMN, SYNCED_COLUMN}
    row = rows(db_url, "items")["1"]
    assert (row["name"], row["n"], row[VERSION_COLUMN]) == ("a", 2, v(1))


def test_sink_same_version_twice_changes_nothing(db_url: str) -> None:
    """Replaying a version returns False and leaves the row as it was, even with new content."""
    sink = SqlSink(db_url, "items", "id")
    assert sink.upsert({"id": "a", "name": "first"}, v(1)) is True
    before = rows(db_url, "items")
    assert sink.upsert({"id": "a", "name": "first"}, v(1)) is False
    assert sink.upsert({"id": "a", "name": "changed"}, v(1)) is False
    assert rows(db_url, "items") == before
    assert sink.count() == 1


def test_sink_older_version_never_overwrites_newer(db_url: str) -> None:
    """An older version is refused; a newer one replaces the row."""
    sink = SqlSink(db_url, "items", "id")
    assert sink.upsert({"id": "a", "name": "v5"}, v(5)) is True
    assert sink.upsert({"id": "a", "name": "v3"}, v(3)) is False
    assert rows(db_url, "items")["a"]["name"] == "v5"
    assert sink.upsert({"id": "a", "name": "v7"}, v(7)) is True
    row = rows(db_url, "items")["a"]
    assert (row["name"], row[VERSION_COLUMN]) == ("v7", v(7))


def test_sink_same_instant_orders_by_row_id(db_url: str) -> None:
    """Within one updated instant, the later staged row (higher row id) wins."""
    sink = SqlSink(db_url, "items", "id")
    same = version_string(at(0))
    assert sink.upsert({"id": "a", "name": "row 10"}, queue.sink_version(same, 10)) is True
    assert sink.upsert({"id": "a", "name": "row 9"}, queue.sink_version(same, 9)) is False
    assert sink.upsert({"id": "a", "name": "row 11"}, queue.sink_version(same, 11)) is True
    assert rows(db_url, "items")["a"]["name"] == "row 11"


def test_sink_new_field_adds_column(db_url: str) -> None:
    """A field first seen on a later record adds a column; earlier rows read NULL there."""
    sink = SqlSink(db_url, "items", "id")
    sink.upsert({"id": "a", "name": "x"}, v(1))
    assert sink.upsert({"id": "b", "name": "y", "colour": "red"}, v(2)) is True
    got = rows(db_url, "items")
    assert got["b"]["colour"] == "red"
    assert got["a"]["colour"] is None
    # a second sink (another worker) with a stale idea of the table also copes
    assert SqlSink(db_url, "items", "id").upsert({"id": "c", "size": 3}, v(3)) is True
    assert rows(db_url, "items")["c"]["size"] == 3


def test_sink_nested_values_stored_as_json_text(db_url: str) -> None:
    """Dicts and lists are stored as JSON text (sorted keys) that loads back equal."""
    nested = {"b": [1, 2, {"c": None}], "a": "ü"}
    SqlSink(db_url, "items", "id").upsert({"id": "a", "meta": nested, "tags": ["x"]}, v(1))
    row = rows(db_url, "items")["a"]
    assert isinstance(row["meta"], str)
    assert json.loads(row["meta"]) == nested
    assert row["meta"] == json.dumps(nested, sort_keys=True)
    assert json.loads(row["tags"]) == ["x"]


def test_sink_missing_key_is_permanent(db_url: str) -> None:
    """A record without the key field raises PermanentError and writes nothing."""
    sink = SqlSink(db_url, "items", "code")
    with pytest.raises(PermanentError, match="no key field 'code'"):
        sink.upsert({"id": "a"}, v(1))
    assert not inspect(get_engine(db_url)).has_table("items")


# --- the staged queue (SQLite) --------------------------------------------------------------

NAME = "items"


def stage(url: str, *records: SourceRecord) -> list[int]:
    with session_scope(url) as session:
        return queue.stage(session, NAME, None, list(records), due_in=300)


def staged(url: str, row_id: int) -> StagedRecord:
    with session_scope(url) as session:
        row = session.get(StagedRecord, row_id)
        assert row is not None
        session.expunge(row)
        return row


def state(url: str, row_id: int) -> dict[str, Any]:
    row = staged(url, row_id)
    return {c: getattr(row, c) for c in StagedRecord.__table__.columns.keys()}  # noqa: SIM118


def dead_letters(url: str, row_id: int) -> list[DeadLetter]:
    with session_scope(url) as session:
        found = list(session.scalars(select(DeadLetter).where(DeadLetter.record_row_id == row_id)))
        session.expunge_all()
        return found


def test_stage_dedupes_same_version_and_digest(sqlite_url: str) -> None:
    """Re-staging a record whose latest row has the same version and content adds nothing."""
    first = stage(sqlite_url, rec("a", 1, name="x"), rec("b", 1, name="y"))
    assert len(first) == 2
    assert stage(sqlite_url, rec("a", 1, name="x"), rec("b", 1, name="y")) == []
    with session_scope(sqlite_url) as session:
        assert session.scalar(select(func.count()).select_from(StagedRecord)) == 2


def test_stage_changed_payload_same_version_is_staged(sqlite_url: str) -> None:
    """Content that changed within one timestamp tick is staged as a new row."""
    [first] = stage(sqlite_url, rec("a", 1, name="x"))
    [second] = stage(sqlite_url, rec("a", 1, name="changed"))
    assert second > first
    assert json.loads(staged(sqlite_url, second).payload)["name"] == "changed"
    # the comparison is with the latest row only: going back to the old content stages again
    assert len(stage(sqlite_url, rec("a", 1, name="x"))) == 1


def test_stage_newer_version_is_staged(sqlite_url: str) -> None:
    """The same content with a newer updated instant is a new version and is staged."""
    stage(sqlite_url, rec("a", 1, name="x"))
    [row_id] = stage(sqlite_url, rec("a", 2, name="x"))
    assert staged(sqlite_url, row_id).version == version_string(at(2))


def test_stage_repeated_id_in_one_page_keeps_last(sqlite_url: str) -> None:
    """One page naming an id twice stages one row, with the last payload."""
    [row_id] = stage(sqlite_url, rec("a", 1, name="old"), rec("a", 2, name="new"))
    row = staged(sqlite_url, row_id)
    assert json.loads(row.payload)["name"] == "new"
    assert row.status == RecordStatus.PENDING


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        (("2024-05-01T12:00:00.000000Z", 999), ("2024-05-01T12:00:00.000001Z", 1)),
        (("2024-05-01T12:00:00.000000Z", 2), ("2024-05-01T12:00:00.000000Z", 10)),
        (("2024-05-01T12:00:00.000000Z", 99), ("2024-05-01T12:00:00.000000Z", 100)),
        (("2024-05-01T12:00:00.000000Z", 1), ("2025-01-01T00:00:00.000000Z", 1)),
    ],
    ids=["version_first", "row_id_numeric", "row_id_digits", "year"],
)
def test_sink_version_orders_by_version_then_row_id(
    lower: tuple[str, int], higher: tuple[str, int]
) -> None:
    """sink_version text compares by version first, then row id numerically."""
    assert queue.sink_version(*lower) < queue.sink_version(*higher)


def test_claim_done_row_returns_none_and_changes_nothing(sqlite_url: str) -> None:
    """A duplicate delivery of a finished row gets no claim and leaves the row untouched."""
    [row_id] = stage(sqlite_url, rec("a", 1))
    claim = queue.claim(sqlite_url, row_id, deadline=60)
    assert claim is not None
    assert (claim.record_id, claim.attempts, claim.crash_redeliveries) == ("a", 1, 0)
    assert claim.payload == {"id": "a"}
    queue.mark_done(sqlite_url, row_id, 1.0)
    before = state(sqlite_url, row_id)
    assert before["status"] == RecordStatus.DONE
    assert queue.claim(sqlite_url, row_id, deadline=60) is None
    assert state(sqlite_url, row_id) == before


def test_claim_missing_row_returns_none(sqlite_url: str) -> None:
    """Claiming a row id that does not exist returns None."""
    assert queue.claim(sqlite_url, 424242, deadline=60) is None


def test_claim_while_processing_counts_crash_redeliveries(sqlite_url: str) -> None:
    """A claim of a row already processing (its worker died) counts a crash redelivery."""
    [row_id] = stage(sqlite_url, rec("a", 1))
    got = [queue.claim(sqlite_url, row_id, deadline=60) for _ in range(3)]
    assert [(c.attempts, c.crash_redeliveries) for c in got if c] == [(1, 0), (2, 1), (3, 2)]
    assert state(sqlite_url, row_id)["deliveries"] == 2


def test_claim_after_retrying_is_not_a_crash(sqlite_url: str) -> None:
    """A row the worker put back to retrying is reclaimed without counting a crash."""
    [row_id] = stage(sqlite_url, rec("a", 1))
    queue.claim(sqlite_url, row_id, deadline=60)
    assert queue.mark_retrying(sqlite_url, row_id, RuntimeError("503"), datetime(2030, 1, 1))
    claim = queue.claim(sqlite_url, row_id, deadline=60)
    assert claim is not None
    assert (claim.attempts, claim.crash_redeliveries) == (2, 0)


def test_mark_dead_twice_writes_one_dead_letter(sqlite_url: str) -> None:
    """mark_dead is True once, False on a repeat, and leaves exactly one dead-letter row."""
    [row_id] = stage(sqlite_url, rec("a", 1))
    queue.claim(sqlite_url, row_id, deadline=60)
    kwargs = {"error_class": "PermanentError", "message": "422", "traceback": None, "worker": "w"}
    assert queue.mark_dead(sqlite_url, row_id, **kwargs) is True  # type: ignore[arg-type]
    assert queue.mark_dead(sqlite_url, row_id, **kwargs) is False  # type: ignore[arg-type]
    [letter] = dead_letters(sqlite_url, row_id)
    assert (letter.message, letter.attempts, letter.active) == ("422", 1, True)
    assert state(sqlite_url, row_id)["status"] == RecordStatus.DEAD


def test_dead_again_after_requeue_refreshes_the_one_dead_letter(sqlite_url: str) -> None:
    """Dying again after a requeue updates the same dead-letter row and keeps its count."""
    [row_id] = stage(sqlite_url, rec("a", 1))
    for message in ("first", "second"):
        queue.claim(sqlite_url, row_id, deadline=60)
        queue.mark_dead(
            sqlite_url, row_id, error_class="E", message=message, traceback=None, worker=None
        )
        if message == "first":
            assert queue.requeue_dead(sqlite_url, row_ids=[row_id]) == [row_id]
    [letter] = dead_letters(sqlite_url, row_id)
    assert (letter.message, letter.requeue_count, letter.active) == ("second", 1, True)


def _two_dead(url: str) -> list[int]:
    ids = stage(url, rec("a", 1), rec("b", 1), rec("c", 1))
    for row_id in ids[:2]:
        queue.claim(url, row_id, deadline=60)
        queue.mark_dead(url, row_id, error_class="E", message="m", traceback=None, worker=None)
    return ids


def test_requeue_dead_dry_run_moves_nothing(sqlite_url: str) -> None:
    """A dry run lists the dead rows and changes neither them nor their dead letters."""
    ids = _two_dead(sqlite_url)
    before = [state(sqlite_url, i) for i in ids]
    assert queue.requeue_dead(sqlite_url, everything=True, dry_run=True) == ids[:2]
    assert [state(sqlite_url, i) for i in ids] == before
    assert all(dead_letters(sqlite_url, i)[0].active for i in ids[:2])


def test_requeue_dead_everything(sqlite_url: str) -> None:
    """everything=True returns the dead ids, makes them pending, deactivates their letters."""
    ids = _two_dead(sqlite_url)
    assert queue.requeue_dead(sqlite_url, everything=True) == ids[:2]
    for row_id in ids[:2]:
        row = state(sqlite_url, row_id)
        assert (row["status"], row["attempts"], row["deliveries"]) == ("pending", 0, 0)
        assert row["finished_at"] is None
        [letter] = dead_letters(sqlite_url, row_id)
        assert (letter.active, letter.requeue_count) == (False, 1)
        assert letter.requeued_at is not None
    assert state(sqlite_url, ids[2])["status"] == RecordStatus.PENDING
    assert queue.requeue_dead(sqlite_url, everything=True) == []


def test_requeue_dead_needs_a_selection(sqlite_url: str) -> None:
    """requeue_dead without integration, ids or everything refuses."""
    with pytest.raises(ValueError, match="name an integration"):
        queue.requeue_dead(sqlite_url)


# --- process_record -------------------------------------------------------------------------


def hub(url: str, home: Path) -> Hub:
    settings = settings_from_env({"IHUB_DATABASE_URL": url, "IHUB_HOME": str(home)})
    config = parse_config(
        {
            "integrations": {
                NAME: {
                    "source": {"url": "https://api.example.com/items"},
                    "sink": {"table": "target_items"},
                }
            }
        },
        file="x",
        env={},
    )
    return Hub(settings, config)


def test_process_record_twice_leaves_target_unchanged(db_url: str, tmp_path: Path) -> None:
    """The second processing of a row is 'skipped' and the target row stays the same."""
    the_hub = hub(db_url, tmp_path)
    [row_id] = stage(db_url, rec("a", 1, name="x", meta={"k": 1}))
    first = process_record(the_hub, row_id, worker="w1")
    assert first.status == "done"
    target = rows(db_url, "target_items")
    assert target["a"]["name"] == "x"
    assert json.loads(target["a"]["meta"]) == {"k": 1}
    assert target["a"][VERSION_COLUMN] == queue.sink_version(version_string(at(1)), row_id)
    record_before = state(db_url, row_id)

    second = process_record(the_hub, row_id, worker="w2")
    assert second.status == "skipped"
    assert rows(db_url, "target_items") == target
    assert state(db_url, row_id) == record_before


def test_process_older_row_after_newer_keeps_newer(db_url: str, tmp_path: Path) -> None:
    """An older staged version processed late is done but does not overwrite the newer value."""
    the_hub = hub(db_url, tmp_path)
    [old] = stage(db_url, rec("a", 1, name="old"))
    [new] = stage(db_url, rec("a", 2, name="new"))
    assert process_record(the_hub, new).status == "done"
    assert process_record(the_hub, old).status == "done"
    assert rows(db_url, "target_items")["a"]["name"] == "new"


def test_process_record_without_key_is_dead_lettered(db_url: str, tmp_path: Path) -> None:
    """A payload missing the sink key goes dead with one PermanentError dead letter."""
    the_hub = hub(db_url, tmp_path)
    with session_scope(db_url) as session:
        [row_id] = queue.stage(
            session, NAME, None, [SourceRecord("a", at(1), {"name": "no id"})], due_in=300
        )
    outcome = process_record(the_hub, row_id)
    assert outcome.status == "dead"
    assert isinstance(outcome.error, PermanentError)
    [letter] = dead_letters(db_url, row_id)
    assert letter.error_class == "PermanentError"
    assert process_record(the_hub, row_id).status == "skipped"
