"""Batched mode end to end: real workers, Redis, Postgres and the demo source."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from ihub.cli.runner import wait_for_run
from ihub.demo.source import DemoSource, DemoSourceOptions
from models import dashboard, queue
from models.db import get_engine, session_scope
from models.schema import StagedRecord
from pipeline import sync
from pipeline.hub import Hub
from tests.workers import service_env, workers, write_config

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture
def source() -> DemoSource:
    demo = DemoSource(DemoSourceOptions(token_lifetime=30, page_size_max=1000)).start()
    yield demo
    demo.stop()


@pytest.fixture
def stack(tmp_path: Path, pg_url: str, redis_url: str, source: DemoSource, monkeypatch):
    """Workers' env, a Hub and a Celery app for an integration in batched mode (chunks of 50)."""
    config = write_config(
        tmp_path / "integrations.yaml",
        source.url,
        source.options.client_secret,
        mode="batched",
        batch_size=50,
    )
    env = service_env(tmp_path, config, pg_url, redis_url)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from tasks import app as app_module

    monkeypatch.setattr(app_module, "_app", None)
    return env, Hub.from_env(), app_module.get_app()


def fetch(hub: Hub, app) -> sync.FetchResult:
    from tasks.records import publisher

    return sync.fetch_delta(hub, "incidents", publisher(app, hub, "incidents"), owner="test")


def target_rows(url: str) -> dict[str, tuple[int, str]]:
    with get_engine(url).connect() as connection:
        rows = connection.execute(text("SELECT id, version, updated_at FROM incidents"))
        return {r[0]: (int(r[1]), r[2]) for r in rows}


def source_rows(source: DemoSource) -> dict[str, tuple[int, str]]:
    return {k: (int(v["version"]), v["updated_at"]) for k, v in source.snapshot().items()}


def finish_instants(url: str, run_id: int) -> int:
    with session_scope(url) as session:
        query = select(func.count(func.distinct(StagedRecord.finished_at))).where(
            StagedRecord.fetch_run_id == run_id
        )
        return int(session.scalar(query) or 0)


def test_batched_chunk_with_a_poisoned_record_ends_each_record_on_its_own(
    stack, source: DemoSource
) -> None:
    """200 records in chunks of 50 (four commits); then a delta of 6 changes, one the target
    refuses: 5 done, the refused one dead with its reason, counted once; a requeue after the
    fix brings it home, and the target equals the source (the version guard held)."""
    env, hub, app = stack
    source.seed(200)
    with workers(env, count=1, concurrency=2):
        first = fetch(hub, app)
        counts = wait_for_run(hub.database_url, first.run_id, timeout=120)
        assert counts["done"] == 200, counts
        assert finish_instants(hub.database_url, first.run_id) <= 4  # written chunk by chunk

        for n in (3, 9, 11, 12, 40):
            source.update(f"REC{n:06d}", state="closed")
        source.update("REC000007", priority="urgent")  # the priority column is BIGINT
        delta = fetch(hub, app)
        counts = wait_for_run(hub.database_url, delta.run_id, timeout=120)
        assert counts == {"pending": 0, "processing": 0, "retrying": 0, "done": 5, "dead": 1}
        [dead] = queue.list_dead(hub.database_url)
        assert dead["record_id"] == "REC000007" and dead["attempts"] == 1
        assert dead["error_class"] == "PermanentError" and "urgent" in dead["message"]
        assert dashboard.record_stats(hub.database_url).totals["incidents"]["dead"] == 1

        with get_engine(hub.database_url).begin() as connection:
            connection.execute(text("ALTER TABLE incidents ALTER COLUMN priority TYPE TEXT"))
        assert queue.requeue_dead(hub.database_url, everything=True, actor="test") == [
            dead["row_id"]
        ]
        from tasks.records import publish_records

        publish_records(app, [dead["row_id"]])
        wait_for_run(hub.database_url, delta.run_id, timeout=120)
        assert target_rows(hub.database_url) == source_rows(source)
        assert queue.list_dead(hub.database_url) == []
