"""The retry path against real services: Retry-After from a source and a target, a 200 that
says it failed, a record that kills its worker every time, recovery after a killed worker,
a retry whose publish fails, and a dead letter written while Postgres is unreachable."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from ihub.cli.runner import wait_for_run
from ihub.demo.source import DemoSource, DemoSourceOptions
from ihub.demo.target import DemoTarget
from models import queue
from models.db import dispose_all, get_engine, session_scope
from models.schema import DeadLetter, StagedRecord
from pipeline import sync
from pipeline.spool import Spool
from pipeline.timefmt import utcnow
from tests.chaostools import (
    TcpProxy,
    build_stack,
    chaos_env,
    cluster,
    fetch,
    free_port,
    prepare_target,
    settled,
    source_rows,
    target_rows,
    wait_until,
)

pytestmark = [pytest.mark.services, pytest.mark.slow]


class TimedTarget(DemoTarget):
    """A demo target that remembers when each item was posted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.posts: dict[str, list[float]] = {}

    def _handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Any:
        if raw_path.startswith("/api/items/"):
            self.posts.setdefault(raw_path.rsplit("/", 1)[1], []).append(time.monotonic())
        return super()._handle(method, raw_path, headers, body)


class TimedSource(DemoSource):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pages: list[float] = []

    def _handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Any:
        if raw_path.startswith("/api/records"):
            self.pages.append(time.monotonic())
        return super()._handle(method, raw_path, headers, body)


@pytest.fixture
def source() -> Iterator[TimedSource]:
    demo = TimedSource(DemoSourceOptions(token_lifetime=60, page_size_max=1000)).start()
    yield demo
    demo.stop()


@pytest.fixture
def target() -> Iterator[TimedTarget]:
    demo = TimedTarget().start()
    yield demo
    demo.stop()


def rest_sink(target: DemoTarget) -> dict[str, Any]:
    return {
        "type": "rest",
        "url": target.items_url,
        "method": "POST",
        "auth": {
            "type": "oauth2",
            "grant_type": "client_credentials",
            "token_url": target.token_url,
            "client_id": target.options.client_id,
            "client_secret": target.options.client_secret,
        },
    }


def http_date(seconds_from_now: float) -> str:
    return email.utils.format_datetime(
        datetime.now(UTC) + timedelta(seconds=seconds_from_now), usegmt=True
    )


def test_retry_after_and_200_error_bodies_from_source_and_target(
    tmp_path: Path, monkeypatch, pg_url: str, redis_url: str, source, target
) -> None:
    """Retry-After (seconds or HTTP-date) from the target and from the source sets that
    attempt's delay, far above the computed backoff; a 200 whose body says "refused" is dead at
    once, one that says "busy, come back in 2 s" is retried after 2 s, via a classify hook."""
    source.seed(12)
    env, hub, app = build_stack(
        tmp_path,
        monkeypatch,
        source,
        pg_url,
        redis_url,
        sink=rest_sink(target),
        retry={"max_retries": 5, "backoff": 0.05, "backoff_max": 10},
        classify="tests.chaostools:classify_body",
    )
    with cluster(env, tmp_path) as running:
        running.start_worker("w0", 2)
        running.wait_ready()
        target.fail_next("/api/items/REC000003", 503, retry_after="3")
        target.fail_next("/api/items/REC000005", 429, retry_after=http_date(8))
        target.fail_next("/api/items/REC000007", 503)  # no Retry-After: backoff under 0.05 s
        refused = '{"ok": false, "error": "email already taken"}'
        target.fail_next("/api/items/REC000004", 200, count=50, body=refused)
        busy = '{"ok": false, "error": "busy", "retry_in": 2}'
        target.fail_next("/api/items/REC000006", 200, body=busy)
        source.fail_next("/api/records", 429, retry_after="2")
        app.tasks["ihub.fetch_delta"].apply_async(("incidents",))
        wait_until(lambda: queue.counts(hub.database_url)["done"] == 11, timeout=90, what="done")
        wait_until(lambda: settled(hub.database_url), timeout=30, what="settled")

    gaps = {k: round(v[1] - v[0], 2) for k, v in target.posts.items() if len(v) > 1}
    assert gaps["REC000003"] >= 2.9 and gaps["REC000005"] >= 2.0 and gaps["REC000006"] >= 1.9
    assert gaps["REC000007"] < 1.0
    assert source.pages[1] - source.pages[0] >= 1.9
    [dead] = queue.list_dead(hub.database_url)
    assert (dead["record_id"], dead["error_class"], dead["attempts"]) == (
        "REC000004",
        "PermanentError",
        1,
    )
    assert "email already taken" in dead["message"]
    arrived = {k: (v["version"], v["updated_at"]) for k, v in target.items().items()}
    expected = source_rows(source)
    del expected["REC000004"]
    assert arrived == expected


def test_a_record_that_kills_its_worker_every_time_is_dead_lettered(
    tmp_path: Path, monkeypatch, pg_url: str, redis_url: str, source
) -> None:
    """Each delivery of REC000007 loses its worker process: after a bounded number of crash
    redeliveries it is a dead letter (reason crash) instead of a loop; the others land.

    Its write hangs 5 s and then fails, and the worker is killed while it hangs (a Postgres
    backend asleep in the trigger): a write that reached the server before the kill would
    commit all the same (write and done go as one query string), so the record that kills its
    worker is one whose write never completes. The first delivery reads the row without
    claiming it (``models.peek``), so its loss is not counted: one kill more than the limit."""
    source.seed(20)
    prepare_target(pg_url)
    with get_engine(pg_url).begin() as connection:
        connection.exec_driver_sql(
            "CREATE FUNCTION slow_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.id = 'REC000007' THEN PERFORM pg_sleep(5); "
            "RAISE EXCEPTION 'the write of REC000007 never completes'; END IF; "
            "RETURN NEW; END $$; "
            "CREATE TRIGGER poison BEFORE INSERT ON incidents "
            "FOR EACH ROW EXECUTE FUNCTION slow_poison();"
        )
    env, hub, app = build_stack(tmp_path, monkeypatch, source, pg_url, redis_url, env=chaos_env())
    with cluster(env, tmp_path) as running:
        running.start_worker("w0", 1)
        running.wait_ready()
        run = fetch(hub, app)
        [poison] = [r for r in rows_of(pg_url) if r.record_id == "REC000007"]
        killed_at: set[Any] = set()
        deadline = time.monotonic() + 150
        while row_status(pg_url, poison.id)[0] != "dead" and time.monotonic() < deadline:
            for write in poisoned_writes(pg_url):
                if write not in killed_at and running.kill_child(_rng()):
                    killed_at.add(write)
            time.sleep(0.1)
        counts = wait_for_run(hub.database_url, run.run_id, timeout=60)
    assert counts["done"] == 19 and counts["dead"] == 1
    [letter] = queue.list_dead(hub.database_url)
    assert (letter["record_id"], letter["error_class"], letter["reason"]) == (
        "REC000007",
        "WorkerLost",
        "crash",
    )
    assert len(killed_at) == sync.MAX_CRASH_REDELIVERIES + 2


def poisoned_writes(url: str) -> set[tuple[int, Any]]:
    """The sink writes asleep in the poison trigger now: (backend pid, query start) each."""
    with get_engine(url).connect() as connection:
        query = text(
            "SELECT pid, query_start FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event = 'PgSleep'"
        )
        return {(pid, started) for pid, started in connection.execute(query)}


def unacked(app: Any, redis_url: str) -> int:
    """Messages delivered to a worker and not acknowledged yet (kombu's ``unacked`` hash)."""
    import redis

    prefix = app.conf.broker_transport_options.get("global_keyprefix", "")
    return int(redis.Redis.from_url(redis_url).hlen(f"{prefix}unacked"))


def rows_of(url: str) -> list[StagedRecord]:
    with session_scope(url) as session:
        found = list(session.scalars(select(StagedRecord)))
        session.expunge_all()
        return found


def row_status(url: str, row_id: int) -> tuple[str, Any, int]:
    """The row's status, the start of its current claim and the crashes counted so far."""
    with get_engine(url).connect() as connection:
        query = text("SELECT status, started_at, deliveries FROM ihub_records WHERE id = :id")
        status, started, crashes = connection.execute(query, {"id": row_id}).one()
    return status, started, crashes


def _rng() -> Any:
    import random

    return random.Random(7)


def test_tasks_of_a_killed_worker_come_back_within_visibility_timeout_plus_sweep(
    tmp_path: Path, monkeypatch, pg_url: str, redis_url: str, source
) -> None:
    """kill -9 of a whole worker with tasks in hand and no reconciler running: kombu's
    unacked-restore sweep in the surviving worker redelivers them within visibility_timeout +
    unacked_restore_interval, and every record lands once."""
    visibility, sweep = 30, 10
    source.seed(40)
    prepare_target(pg_url, sleep=0.25)
    env, hub, app = build_stack(
        tmp_path,
        monkeypatch,
        source,
        pg_url,
        redis_url,
        env=chaos_env(
            IHUB_RECONCILE_AFTER=600,
            IHUB_PROCESS_TIME_LIMIT=5,
            IHUB_FETCH_TIME_LIMIT=12,
            IHUB_VISIBILITY_TIMEOUT=visibility,
        ),
    )
    with cluster(env, tmp_path) as running:
        running.start_worker("doomed", 2)
        running.wait_ready()
        fetch(hub, app)
        wait_until(lambda: queue.counts(pg_url)["done"] >= 4, timeout=60, what="started")
        running.kill_worker("doomed")
        killed = time.monotonic()
        lost = unacked(app, redis_url)  # the messages it held: a first delivery claims no row
        running.start_worker("survivor", 2)
        # a write that reached the server commits without its worker, so the rows may settle
        # first: the held messages are back once the unacked hash has drained
        wait_until(
            lambda: settled(pg_url) and unacked(app, redis_url) == 0,
            timeout=visibility + sweep + 60,
            what="recovered",
        )
        recovery = time.monotonic() - killed
    print(f"\nrecovery after kill -9 of a worker holding {lost} tasks: {recovery:.1f}s")
    assert lost >= 1  # and the hash drained: the sweep restored them (no reconciler runs)
    assert target_rows(pg_url) == source_rows(source)
    assert queue.counts(pg_url)["done"] == 40


def test_a_retry_whose_publish_fails_is_republished_by_the_reconciler(
    tmp_path: Path, monkeypatch, sqlite_url: str, source
) -> None:
    """The broker is unreachable when the task publishes its retry (Celery then drops the
    message): the row is already retrying with a deadline, and the reconciler sends it again."""
    from celery.exceptions import Reject

    source.seed(1)
    dead_target = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    broker = f"redis://127.0.0.1:{free_port()}/0"
    _env, hub, app = build_stack(
        tmp_path, monkeypatch, source, sqlite_url, broker, sink__url=dead_target
    )
    app.conf.task_publish_retry = False
    published: list[int] = []
    result = sync.fetch_delta(hub, "incidents", published.extend, owner="test")
    [row_id] = published
    assert result.staged == 1
    task = app.tasks["ihub.process_record"]
    task.push_request(
        id="task-1",
        retries=0,
        hostname="w1",
        delivery_info={"redelivered": False},
        called_directly=False,
    )
    try:
        with pytest.raises(Reject):
            task.run(row_id)
    finally:
        task.pop_request()
    row = rows_of(sqlite_url)[0]
    assert row.status == "retrying" and row.due_at > utcnow()
    with session_scope(sqlite_url) as session:
        session.get(StagedRecord, row_id).due_at = utcnow() - timedelta(seconds=1)
    again: list[int] = []
    assert sync.reconcile(hub, again.extend) == 1 and again == [row_id]


def test_dead_letter_written_once_when_postgres_is_down_at_the_write(
    tmp_path: Path, monkeypatch, pg_url: str, source
) -> None:
    """Postgres unreachable at the moment of the dead-letter write: the verdict is spooled,
    and once Postgres is back the reconciler writes exactly one dead letter."""
    parsed = make_url(pg_url)
    proxy = TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432).start()
    through_proxy = parsed.set(port=proxy.port).render_as_string(hide_password=False)
    source.seed(1)
    _env, hub, _app = build_stack(
        tmp_path, monkeypatch, source, through_proxy, "redis://127.0.0.1:1/0", sink__key="nope"
    )
    published: list[int] = []
    sync.fetch_delta(hub, "incidents", published.extend, owner="test")
    [row_id] = published
    real_mark_dead, cut = queue.mark_dead, []

    def lose_postgres_then_mark_dead(*args: Any, **kwargs: Any) -> Any:
        if not cut:
            proxy.stop()
            cut.append(time.monotonic())
        return real_mark_dead(*args, **kwargs)

    monkeypatch.setattr(queue, "mark_dead", lose_postgres_then_mark_dead)
    spool = Spool(None, tmp_path / "spool")
    delivery = sync.Delivery(worker="w1", token="task-1", redelivered=False, spool=spool)
    try:
        outcome = sync.process_record(hub, row_id, delivery=delivery)
        assert outcome.status == "dead" and spool.size() == 1
        proxy.start()
        assert sync.reconcile(hub, published.extend, spool) == 0
        assert sync.reconcile(hub, published.extend, spool) == 0
    finally:
        proxy.stop()
        dispose_all()
    with session_scope(pg_url) as session:
        letters = list(session.scalars(select(DeadLetter)))
        assert [(d.record_row_id, d.error_class) for d in letters] == [(row_id, "PermanentError")]
        assert "no key field 'nope'" in letters[0].message
        assert session.get(StagedRecord, row_id).status == "dead"
    assert spool.size() == 0
