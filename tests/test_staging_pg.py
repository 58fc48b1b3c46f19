"""Staging a page on Postgres: new records' dedupe rows by COPY, known ones by upsert, and a
record another fetch staged meanwhile still written once, by the upsert."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from models import queue, staging_pg
from models.db import session_scope
from models.schema import LatestRecord, StagedRecord
from pipeline.delta import SourceRecord

NAME = "incidents"
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def rec(record_id: str, seconds: float, **payload: Any) -> SourceRecord:
    return SourceRecord(record_id, T0 + timedelta(seconds=seconds), {"id": record_id, **payload})


def stage(url: str, records: list[SourceRecord]) -> list[int]:
    with session_scope(url) as session:
        return queue.stage(session, NAME, None, records, due_in=300)


def pointers(url: str) -> dict[str, int]:
    """Each record's latest row id in ``ihub_latest``, checked to carry that row's version."""
    with session_scope(url) as session:
        latest = session.execute(
            select(LatestRecord.record_id, LatestRecord.version, LatestRecord.row_id)
        ).all()
        staged = {i: v for i, v in session.execute(select(StagedRecord.id, StagedRecord.version))}
    assert all(staged[row_id] == version for _, version, row_id in latest), latest
    return {record_id: row_id for record_id, _, row_id in latest}


def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements staging sends from now on, COPY included, first words only."""
    seen: list[str] = []
    copy, upsert = staging_pg._copy_latest, staging_pg._upsert_latest

    def copying(cur: Any, *args: Any) -> bool:
        seen.append("copy")
        return copy(cur, *args)

    def upserting(cur: Any, *args: Any) -> None:
        seen.append("upsert")
        upsert(cur, *args)

    monkeypatch.setattr(staging_pg, "_copy_latest", copying)
    monkeypatch.setattr(staging_pg, "_upsert_latest", upserting)
    return seen


def test_new_records_are_copied_and_known_ones_upserted(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = sent(monkeypatch)
    first = stage(pg_url, [rec("a", 0), rec("b", 0)])
    assert seen == ["copy"]
    assert pointers(pg_url) == {"a": first[0], "b": first[1]}
    seen.clear()
    second = stage(pg_url, [rec("a", 5, n=1), rec("b", 0), rec("c", 1)])  # b is unchanged
    assert seen == ["copy", "upsert"] and len(second) == 2
    assert pointers(pg_url) == {"a": second[0], "b": first[1], "c": second[1]}


def test_a_full_refresh_upserts_without_reading(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage(pg_url, [rec("a", 0)])
    seen = sent(monkeypatch)
    with session_scope(pg_url) as session:
        again = queue.stage(session, NAME, None, [rec("a", 0), rec("b", 0)], due_in=300, force=True)
    assert seen == ["upsert"] and len(again) == 2
    assert pointers(pg_url) == {"a": again[0], "b": again[1]}


def test_a_record_staged_meanwhile_falls_back_to_the_upsert(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another fetch staged ``a`` after this page read ``ihub_latest``: the COPY hits its key,
    the savepoint takes the COPY back, and the upsert writes both; the page's rows all commit."""
    earlier = stage(pg_url, [rec("a", 0)])
    seen = sent(monkeypatch)
    read = staging_pg.read_page

    def before_a_landed(*args: Any, **kwargs: Any) -> tuple[list[int], dict[str, Any]]:
        return read(*args, **kwargs)[0], {}

    monkeypatch.setattr(staging_pg, "read_page", before_a_landed)
    later = stage(pg_url, [rec("a", 5, n=2), rec("b", 0)])
    assert seen == ["copy", "upsert"] and len(later) == 2
    assert pointers(pg_url) == {"a": later[0], "b": later[1]}
    with session_scope(pg_url) as session:
        assert sorted(session.scalars(select(StagedRecord.id))) == sorted([*earlier, *later])


def test_ids_that_copy_must_escape_round_trip(pg_url: str) -> None:
    """A backslash, quotes and non-ASCII in an id reach ``ihub_latest`` unchanged through
    ``COPY``, and come back unchanged through the array dedupe reads them in (braces, commas,
    blanks and the word NULL are what an array literal quotes): a second read of the same
    records stages nothing, a new version one row each."""
    odd = ["back\\slash", 'it\'s "quoted"', "ünïcødé 記録", "\\N", "tail\\"]
    odd += ["{braced}", "a,b", " padded ", "NULL", "null", ""]
    first = stage(pg_url, [rec(i, 0) for i in odd])
    assert set(pointers(pg_url)) == set(odd) and len(first) == len(odd)
    assert stage(pg_url, [rec(i, 0) for i in odd]) == []
    assert len(stage(pg_url, [rec(i, 9, n=1) for i in odd])) == len(odd)
