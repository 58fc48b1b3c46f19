"""Retention and rollups: pruning changes no figure, counters never go down, dedupe survives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from ihub import report
from models import dashboard, deadletters, queue, retention
from models.db import session_scope
from models.schema import LatestRecord, StagedRecord
from pipeline.config import parse_config
from pipeline.delta import SourceRecord
from pipeline.errors import TransientError
from pipeline.hub import Hub
from pipeline.settings import settings_from_env
from pipeline.sync import process_record
from pipeline.timefmt import utcnow

NAME = "items"
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def make_hub(url: str, home: Path) -> Hub:
    settings = settings_from_env({"IHUB_DATABASE_URL": url, "IHUB_HOME": str(home)})
    body = {"source": {"url": "https://api.example.com/items"}, "sink": {"table": "target"}}
    return Hub(settings, parse_config({"integrations": {NAME: body}}, file="x", env={}))


def stage(url: str, records: list[SourceRecord]) -> list[int]:
    with session_scope(url) as session:
        return queue.stage(session, NAME, None, records, due_in=300)


def rec(record_id: str, seconds: float, **payload: Any) -> SourceRecord:
    return SourceRecord(record_id, T0 + timedelta(seconds=seconds), {"id": record_id, **payload})


def figures(url: str, now: datetime) -> dict[str, Any]:
    """Everything the dashboard and /metrics count, as seen at ``now``."""
    stats = dashboard.record_stats(url)
    return {
        "success": report.success_rate(url, now, 24),
        "processing": report.processing_time(url, now, 24),
        "throughput": report.throughput(url, now, 1),
        "counters": stats.totals,
        "histogram": stats.durations,
    }


def counters(url: str) -> dict[str, int]:
    return dashboard.record_stats(url).totals[NAME]


def row_count(url: str) -> int:
    with session_scope(url) as session:
        return int(session.scalar(select(func.count()).select_from(StagedRecord)) or 0)


def test_pruning_done_rows_changes_no_figure(db_url: str, tmp_path: Path) -> None:
    """Ten records done, one dead: prune every done row; every chart and counter is the same."""
    hub = make_hub(db_url, tmp_path)
    ids = stage(db_url, [rec(f"r{i}", i, n=i) for i in range(10)])
    [bad] = stage(db_url, [SourceRecord("bad", T0, {"no": "key"})])
    assert [process_record(hub, i).status for i in ids] == ["done"] * 10
    assert process_record(hub, bad).status == "dead"
    now = utcnow() + timedelta(minutes=1)
    before = figures(db_url, now)
    assert before["counters"][NAME] == {"done": 10, "dead": 1, "retries": 0}

    assert retention.prune(db_url, older_than=timedelta(0)) == 10
    assert row_count(db_url) == 1  # the dead row stays until it is purged
    assert figures(db_url, now) == before


def test_counters_never_go_down_across_requeue_and_purge(db_url: str, tmp_path: Path) -> None:
    """A retry, a death, a requeue, a second death, a purge: done/dead/retries only grow."""
    hub = make_hub(db_url, tmp_path)
    [row] = stage(db_url, [SourceRecord("bad", T0, {"no": "key"})])
    claim = queue.claim(db_url, row, deadline=60)
    assert claim is not None
    assert queue.mark_retrying(db_url, row, TransientError("503"), utcnow())
    seen = [counters(db_url)]
    assert process_record(hub, row).status == "dead"
    seen.append(counters(db_url))
    assert queue.requeue_dead(db_url, row_ids=[row], actor="test") == [row]
    seen.append(counters(db_url))
    assert process_record(hub, row).status == "dead"
    seen.append(counters(db_url))
    selection = deadletters.Selection(integration=NAME, everything=True)
    purged = deadletters.purge(
        db_url, older_than=timedelta(seconds=-60), selection=selection, actor="test"
    )
    assert purged == 1 and row_count(db_url) == 0
    seen.append(counters(db_url))
    for earlier, later in pairwise(seen):
        assert all(later[k] >= earlier[k] for k in earlier), (earlier, later)
    assert seen[-1] == {"done": 0, "dead": 2, "retries": 1}


def test_dedupe_survives_pruning_and_reads_one_row_per_record(db_url: str, tmp_path: Path) -> None:
    """After ten versions of a record and a prune of its history, a re-read of the last version
    stages nothing, a new version stages one row, and ihub_latest holds one row per record."""
    hub = make_hub(db_url, tmp_path)
    rows = stage(db_url, [rec("b", 0)])
    for version in range(10):
        rows += stage(db_url, [rec("a", version, n=version)])
    assert len(rows) == 11
    assert [process_record(hub, row).status for row in rows] == ["done"] * 11
    retention.prune(db_url, older_than=timedelta(0))
    assert stage(db_url, [rec("a", 9, n=9), rec("b", 0)]) == []
    assert len(stage(db_url, [rec("a", 10, n=10)])) == 1
    with session_scope(db_url) as session:
        assert session.scalar(select(func.count()).select_from(LatestRecord)) == 2


def test_migration_derives_latest_and_rollups_from_existing_rows(db_url: str) -> None:
    """Upgrading a 0002 database with history: ihub_latest holds each record's newest row and
    the rollups count what the rows say."""
    from alembic import command

    from models import migrate
    from models.schema import Rollup

    command.downgrade(migrate.alembic_config(db_url), "0002")  # the fixture migrated to head
    now = utcnow()
    with session_scope(db_url) as session:
        for n, (record_id, status) in enumerate([("a", "done"), ("a", "done"), ("b", "pending")]):
            session.add(
                StagedRecord(
                    integration=NAME,
                    record_id=record_id,
                    version=f"v{n}",
                    digest=f"d{n}",
                    payload="{}",
                    status=status,
                    attempts=2 if status == "done" else 0,
                    deliveries=0,
                    finished_at=now if status == "done" else None,
                    duration_ms=7.0 if status == "done" else None,
                )
            )
    migrate.upgrade(db_url)
    with session_scope(db_url) as session:
        latest = {r.record_id: (r.version, r.digest) for r in session.scalars(select(LatestRecord))}
        assert latest == {"a": ("v1", "d1"), "b": ("v2", "d2")}
        assert session.scalar(select(func.sum(Rollup.done))) == 2
        assert session.scalar(select(func.sum(Rollup.retries))) == 2
        assert session.scalar(select(func.sum(Rollup.le_10))) == 2
