"""End to end on Redis + Postgres with real worker processes and the real demo source."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from ihub.cli.runner import wait_for_run
from ihub.demo.source import DemoSource, DemoSourceOptions
from models import queue
from models.db import get_engine
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
    """Env for workers and for this process, a Hub and a Celery app over Postgres + Redis."""

    def build(**overrides: object):
        config = write_config(
            tmp_path / "integrations.yaml", source.url, source.options.client_secret, **overrides
        )
        env = service_env(tmp_path, config, pg_url, redis_url)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        from tasks import app as app_module

        monkeypatch.setattr(app_module, "_app", None)
        return env, Hub.from_env(), app_module.get_app()

    return build


def fetch(hub: Hub, app) -> sync.FetchResult:
    from tasks.records import publish_records

    return sync.fetch_delta(hub, "incidents", lambda ids: publish_records(app, ids), owner="test")


def target_rows(url: str) -> dict[str, tuple[int, str]]:
    with get_engine(url).connect() as connection:
        rows = connection.execute(text("SELECT id, version, updated_at FROM incidents"))
        return {r[0]: (int(r[1]), r[2]) for r in rows}


def source_rows(source: DemoSource) -> dict[str, tuple[int, str]]:
    return {k: (int(v["version"]), v["updated_at"]) for k, v in source.snapshot().items()}


def test_full_then_delta_sync_matches_source(stack, source: DemoSource) -> None:
    """1,000 records land once each; a second delta moves only what changed in between."""
    source.seed(1000)
    env, hub, app = stack()
    with workers(env, count=2, concurrency=2):
        first = fetch(hub, app)
        assert first.status == "ok" and first.staged == 1000
        counts = wait_for_run(hub.database_url, first.run_id, timeout=300)
        assert counts["done"] == 1000 and counts["dead"] == 0
        assert target_rows(hub.database_url) == source_rows(source)

        changed = [f"REC{n:06d}" for n in range(1, 1001, 10)]
        for record_id in changed:
            source.update(record_id, state="resolved")
        for _ in range(5):
            source.insert()
        second = fetch(hub, app)
        assert second.staged == len(changed) + 5
        counts = wait_for_run(hub.database_url, second.run_id, timeout=300)
        assert counts["done"] == len(changed) + 5
        assert target_rows(hub.database_url) == source_rows(source)
    assert queue.counts(hub.database_url)["done"] == 1000 + len(changed) + 5


def test_permanent_failure_dead_letters_at_once_and_requeue_brings_it_home(
    stack, source: DemoSource
) -> None:
    """A record the target rejects is dead at once with payload and reason; a requeue after the
    target is fixed brings it home."""
    source.seed(50)
    env, hub, app = stack()
    with workers(env, count=1, concurrency=2):
        counts = wait_for_run(hub.database_url, fetch(hub, app).run_id, timeout=120)
        assert counts["done"] == 50
        source.update("REC000007", priority="urgent")  # the priority column is BIGINT
        run = fetch(hub, app)
        counts = wait_for_run(hub.database_url, run.run_id, timeout=120)
        assert counts == {"pending": 0, "processing": 0, "retrying": 0, "done": 0, "dead": 1}
        [dead] = queue.list_dead(hub.database_url)
        assert dead["record_id"] == "REC000007" and dead["attempts"] == 1
        assert dead["error_class"] == "PermanentError" and "urgent" in dead["message"]
        detail = queue.show_dead(hub.database_url, dead["row_id"])
        assert detail["payload"]["priority"] == "urgent"

        with get_engine(hub.database_url).begin() as connection:
            connection.execute(text("ALTER TABLE incidents ALTER COLUMN priority TYPE TEXT"))
        from click.testing import CliRunner

        from ihub.cli import main

        result = CliRunner().invoke(main, ["dead", "requeue", "--all", "--yes", "--json"])
        assert result.exit_code == 0, result.output
        assert '"requeued": 1' in result.output
        wait_for_run(hub.database_url, run.run_id, timeout=120)
        assert target_rows(hub.database_url) == source_rows(source)
        assert queue.list_dead(hub.database_url) == []


def test_transient_target_outage_is_retried_with_backoff_then_succeeds(
    stack, source: DemoSource, pg_server_url: str
) -> None:
    """A target database that does not exist yet is a transient error: retried, then done."""
    import secrets

    from sqlalchemy.engine import make_url

    from tests.conftest import admin_engine

    name = f"ihub_target_{secrets.token_hex(4)}"
    target = make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    source.seed(20)
    env, hub, app = stack(sink__url=target)
    admin = admin_engine(pg_server_url)
    try:
        with workers(env, count=1, concurrency=2):
            run = fetch(hub, app)
            deadline_counts = _wait_for(hub, run.run_id, lambda c: c["retrying"] > 0)
            assert deadline_counts["dead"] == 0
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
            counts = wait_for_run(hub.database_url, run.run_id, timeout=120)
            assert counts["done"] == 20 and counts["dead"] == 0
            assert target_rows(target) == source_rows(source)
    finally:
        from models.db import dispose_all

        dispose_all()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _wait_for(hub: Hub, run_id: int, condition, timeout: float = 60) -> dict[str, int]:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = queue.run_counts(hub.database_url, run_id)
        if condition(counts):
            return counts
        time.sleep(0.2)
    raise TimeoutError(f"condition not met: {counts}")


def test_cli_sync_wait_and_status_report_the_run(stack, source: DemoSource) -> None:
    """`ihub sync NAME --wait --json` blocks until the run is finished; `ihub status --json`
    shows the same counts and the watermark."""
    import json

    from click.testing import CliRunner

    from ihub.cli import main

    source.seed(30)
    env, _hub, _app = stack()
    with workers(env, count=1, concurrency=2):
        result = CliRunner().invoke(main, ["sync", "incidents", "--wait", "--json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        assert data["staged"] == 30 and data["counts"]["done"] == 30
        status = json.loads(CliRunner().invoke(main, ["status", "--json"]).output)
    [item] = status["integrations"]
    assert item["counts"]["done"] == 30 and item["status"] == "active"
    assert item["watermark"]["id"] == "REC000030"
    assert status["queues"] == {"ihub.fetch": 0, "ihub.process": 0}
