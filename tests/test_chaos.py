"""Chaos proof: real worker and beat processes on Redis + Postgres, things broken on purpose.

Each scenario ends with the target equal to the source, nothing missing, no duplicate effect
(a trigger logs every write that changed a target row: a version written twice would show),
and prints its figures (``CHAOS {...}``; appended to $IHUB_CHAOS_REPORT when set), which the
README's reliability table quotes.
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import make_url

from ihub.cli import main
from ihub.demo.source import DemoSource, DemoSourceOptions
from models import deadletters, queue
from models.db import dispose_all, get_engine
from tests import storm
from tests.chaostools import (
    RedisServer,
    TcpProxy,
    assert_nothing_lost,
    build_stack,
    chaos_env,
    cluster,
    compare,
    executions,
    fetch_to_end,
    prepare_target,
    report,
    settled,
    wait_until,
    write_stats,
)
from tests.conftest import admin_engine

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture
def source() -> Iterator[DemoSource]:
    demo = DemoSource(DemoSourceOptions(token_lifetime=300, page_size_max=1000)).start()
    yield demo
    demo.stop()


@pytest.fixture
def target_db(pg_server_url: str) -> Iterator[tuple[str, TcpProxy]]:
    """A target database of its own, reached through a TCP proxy the test can cut."""
    name = f"ihub_target_{secrets.token_hex(4)}"
    admin = admin_engine(pg_server_url)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    direct = make_url(pg_server_url).set(database=name)
    proxy = TcpProxy(direct.host or "127.0.0.1", direct.port or 5432).start()
    prepare_target(direct.render_as_string(hide_password=False))
    yield direct.render_as_string(hide_password=False), proxy
    proxy.stop()
    dispose_all()
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def via(proxy: TcpProxy, url: str) -> str:
    return make_url(url).set(port=proxy.port).render_as_string(hide_password=False)


def open_counts(url: str) -> dict[str, int]:
    return queue.counts(url)


def test_1_sigkill_workers_repeatedly_during_a_5000_record_sync(
    tmp_path: Path, monkeypatch, pg_url: str, redis_url: str, source
) -> None:
    """Pool processes SIGKILLed mid-task, one per 250 records done, and once a whole worker:
    every record lands exactly once, none is dead-lettered."""
    source.seed(5000)
    prepare_target(pg_url, sleep=0.002)
    env, hub, app = build_stack(tmp_path, monkeypatch, source, pg_url, redis_url, chaos_env())
    rng = random.Random(5)
    with cluster(env, tmp_path) as running:
        running.start_worker("w0")
        running.start_worker("w1")
        running.start_beat()
        running.wait_ready()
        started = time.monotonic()
        fetch_to_end(hub, app)
        whole_worker = False
        deadline = time.monotonic() + 300
        # the kills follow progress, not the clock (a faster path must not mean fewer kills):
        # one each time another 250 records are done, at most one per poll
        while not settled(pg_url) and time.monotonic() < deadline:
            time.sleep(0.1)
            done = open_counts(pg_url)["done"]
            if running.kills < 15 and done >= (running.kills + 1) * 250:
                running.kill_child(rng)
            if not whole_worker and done > 1500:
                running.kill_worker("w1")
                running.start_worker("w2")
                whole_worker = True
        figures = {**compare(pg_url, pg_url, source, started, tmp_path), "kills": running.kills}
    report("1 sigkill", figures)
    assert whole_worker and running.kills >= 10
    assert_nothing_lost(figures, pg_url)


def test_2_redis_restart_loses_queued_and_retrying_tasks(
    tmp_path: Path, monkeypatch, pg_url: str, source, target_db
) -> None:
    """Redis (no persistence) killed and restarted while records wait in retry countdowns and
    in the queue: the reconciler, run by a real beat, restores every one from the database."""
    target_url, proxy = target_db
    redis_server = RedisServer(tmp_path / "redis").start()
    source.seed(1000)
    env, hub, app = build_stack(
        tmp_path,
        monkeypatch,
        source,
        pg_url,
        redis_server.url,
        chaos_env(),
        sink__url=via(proxy, target_url),
        retry={"max_retries": 20, "backoff": 1, "backoff_max": 5},
    )
    try:
        with cluster(env, tmp_path) as running:
            running.start_worker("w0")
            running.start_worker("w1")
            running.start_beat()
            running.wait_ready()
            started = time.monotonic()
            fetch_to_end(hub, app)
            wait_until(lambda: open_counts(pg_url)["done"] >= 200, timeout=60, what="200 done")
            proxy.stop()
            wait_until(lambda: open_counts(pg_url)["retrying"] >= 50, timeout=60, what="retries")
            at_kill = open_counts(pg_url)
            redis_server.kill()
            time.sleep(2)
            redis_server.start()
            proxy.start()
            wait_until(
                lambda: settled(pg_url),
                timeout=240,
                what="settled",
                state=lambda: open_counts(pg_url),
            )
            figures = compare(pg_url, target_url, source, started, tmp_path)
    finally:
        redis_server.kill()
    report(
        "2 redis restart", {**figures, "open_at_restart": sum(at_kill.values()) - at_kill["done"]}
    )
    assert at_kill["retrying"] >= 50 and at_kill["pending"] > 0
    assert_nothing_lost(figures, pg_url)


def test_3_postgres_restart_mid_run(
    tmp_path: Path, monkeypatch, pg_url: str, redis_url: str, source
) -> None:
    """The Postgres server restarted once mid-run: workers reconnect, the transactions cut off
    are retried (every state change is one transaction, nothing half-written), all land once."""
    clusters = sorted(Path("/etc/postgresql").glob("*/main"))
    if not shutil.which("pg_ctlcluster") or not clusters:
        pytest.skip("needs the local Postgres cluster and pg_ctlcluster to restart it")
    source.seed(1500)
    prepare_target(pg_url)
    env, hub, app = build_stack(tmp_path, monkeypatch, source, pg_url, redis_url, chaos_env())
    with cluster(env, tmp_path) as running:
        running.start_worker("w0")
        running.start_worker("w1")
        running.start_beat()
        running.wait_ready()
        started = time.monotonic()
        fetch_to_end(hub, app)
        wait_until(lambda: open_counts(pg_url)["done"] >= 300, timeout=60, what="300 done")
        version = clusters[-1].parent.name
        restart = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"]
        subprocess.run(restart, check=True, timeout=60)
        wait_until(lambda: _reachable(pg_url) and settled(pg_url), timeout=240, what="settled")
        figures = compare(pg_url, pg_url, source, started, tmp_path)
    report("3 postgres restart", figures)
    assert_nothing_lost(figures, pg_url)


def _reachable(url: str) -> bool:
    try:
        with get_engine(url).connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def test_4_target_down_for_30_seconds(
    tmp_path: Path, monkeypatch, pg_url: str, redis_url: str, source, target_db
) -> None:
    """The target database unreachable for 30 s: records wait in retry and finish when it is
    back; with a retry budget that covers the outage, none is dead-lettered."""
    target_url, proxy = target_db
    source.seed(1000)
    env, hub, app = build_stack(
        tmp_path,
        monkeypatch,
        source,
        pg_url,
        redis_url,
        chaos_env(),
        sink__url=via(proxy, target_url),
        retry={"max_retries": 20, "backoff": 1, "backoff_max": 8},
    )
    with cluster(env, tmp_path) as running:
        running.start_worker("w0")
        running.start_worker("w1")
        running.start_beat()
        running.wait_ready()
        started = time.monotonic()
        fetch_to_end(hub, app)
        wait_until(lambda: open_counts(pg_url)["done"] >= 200, timeout=60, what="200 done")
        proxy.stop()
        time.sleep(30)
        during = open_counts(pg_url)
        proxy.start()
        wait_until(
            lambda: settled(pg_url), timeout=180, what="settled", state=lambda: open_counts(pg_url)
        )
        figures = compare(pg_url, target_url, source, started, tmp_path)
    report("4 target down 30 s", figures)
    assert during["retrying"] > 0 and during["dead"] == 0
    assert_nothing_lost(figures, pg_url)


def test_5_one_percent_poisoned_then_fixed_and_requeued(
    tmp_path: Path, monkeypatch, pg_url: str, redis_url: str, source
) -> None:
    """10 of 1,000 records carry text where the target has BIGINT: exactly those are dead
    letters with the database's reason; after the column is fixed, `ihub dead requeue --all`
    brings every one home."""
    source.seed(1000)
    poisoned = {f"REC{n:06d}" for n in range(50, 1001, 100)}
    for record_id in poisoned:
        source.update(record_id, priority="urgent")
    prepare_target(pg_url)
    env, hub, app = build_stack(tmp_path, monkeypatch, source, pg_url, redis_url, chaos_env())
    with cluster(env, tmp_path) as running:
        running.start_worker("w0")
        running.start_worker("w1")
        running.start_beat()
        running.wait_ready()
        started = time.monotonic()
        fetch_to_end(hub, app)
        wait_until(
            lambda: settled(pg_url), timeout=180, what="settled", state=lambda: open_counts(pg_url)
        )
        first = compare(pg_url, pg_url, source, started, tmp_path)
        letters = queue.list_dead(pg_url, limit=100)
        assert {d["record_id"] for d in letters} == poisoned
        assert {(d["error_class"], d["reason"], d["attempts"]) for d in letters} == {
            ("PermanentError", "permanent", 1)
        }
        assert all(
            'invalid input syntax for type bigint: "urgent"' in d["message"] for d in letters
        )

        with get_engine(pg_url).begin() as connection:
            connection.execute(text("ALTER TABLE incidents ALTER COLUMN priority TYPE TEXT"))
        result = CliRunner().invoke(main, ["dead", "requeue", "--all", "--yes", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["requeued"] == 10
        wait_until(lambda: settled(pg_url), timeout=120, what="requeued settled")
        figures = compare(pg_url, pg_url, source, started, tmp_path)
    report("5 poison 1%", {**figures, "dead": first["dead"], "dead_after_requeue": figures["dead"]})
    assert first["missing"] == 10 and figures["dead"] == 0 and queue.list_dead(pg_url) == []
    assert (figures["missing"], figures["extra"], figures["duplicates"]) == (0, 0, 0)
    [action] = deadletters.actions(pg_url)
    assert (action["action"], action["count"]) == ("requeue", 10)


def test_6_duplicate_delivery_storm(
    tmp_path: Path, monkeypatch, pg_url: str, redis_url: str, source
) -> None:
    """Every process_record published twice (same task id for even rows, a new id for odd),
    retries and republishes included: each record written exactly once, none dead."""
    source.seed(1000)
    prepare_target(pg_url)
    env, hub, app = build_stack(
        tmp_path, monkeypatch, source, pg_url, redis_url, {**chaos_env(), "IHUB_TEST_STORM": "1"}
    )
    monkeypatch.delenv("IHUB_TEST_STORM")
    with cluster(env, tmp_path) as running:
        running.start_worker("w0", 2, "--include", "tests.storm")
        running.start_worker("w1", 2, "--include", "tests.storm")
        running.start_beat()
        running.wait_ready()
        started = time.monotonic()
        storm.install()
        try:
            fetch_to_end(hub, app)
        finally:
            storm.uninstall()
        wait_until(
            lambda: settled(pg_url), timeout=180, what="settled", state=lambda: open_counts(pg_url)
        )
        # a record is done at its first copy; the second may still be on its way
        wait_until(lambda: executions(tmp_path) >= 2000, timeout=120, what="every copy delivered")
        figures = compare(pg_url, pg_url, source, started, tmp_path)
    writes, runs = write_stats(pg_url), executions(tmp_path)
    report("6 duplicate storm", {**figures, "sink_writes": writes["writes"], "task_runs": runs})
    assert runs >= 2000  # every message really came twice
    assert writes == {"writes": 1000, "duplicates": 0, "ids": 1000}
    assert_nothing_lost(figures, pg_url)
