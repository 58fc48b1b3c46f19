"""ihub's own stages in one process, without Celery workers: what an optimisation changed.

    python bench/stages.py [--records 10000] [--page-limit 500] [--repo PATH]

On a database of its own (created and dropped on ``--pg``): (1) the fetch of the demo source,
pages staged and checkpointed, each page published as batch tasks to ``--redis`` (flushed;
nothing consumes them), then 5,000 of its rows published as ``process_record`` tasks, for the
CPU a publish costs; (2) ``sync.process_record`` on rows one at a time into a table of the
same Postgres; (3) ``batch.process_batch`` on chunks of 500. It counts the round trips to
Postgres each makes, and the CPU each costs a record, Postgres' (its server processes) and this
process's (for the fetch that includes the demo source's HTTP threads, the same on both sides
of a comparison). ``--repo`` runs the same measurements on another checkout of ihub (say, a
``git worktree`` of an earlier commit), so before and after are measured in one sitting.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PUBLISHED = 5000  # record tasks published to time a publish


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    sys.path.insert(0, str(Path(args.repo).resolve()))
    lock, key = _claim(args.redis)
    try:
        found = _run(args)
    finally:
        lock.delete(key)
    print(json.dumps(found))
    return 0


def _run(args: argparse.Namespace) -> dict[str, Any]:
    import redis
    import yaml
    from sqlalchemy import create_engine, event, text

    from ihub.demo.source import DemoSource, DemoSourceOptions

    name = f"ihub_stages_{secrets.token_hex(4)}"
    admin = create_engine(_psycopg2(args.pg), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.pg.rsplit("/", 1)[0] + f"/{name}"
    source = DemoSource(DemoSourceOptions(page_size_max=1000)).start()
    try:
        source.seed(args.records)
        home = Path(tempfile.mkdtemp(prefix="ihub-stages-"))
        config = yaml.safe_load((Path(args.repo) / "ihub" / "demo" / "demo.yaml").read_text())
        integration = config["integrations"]["incidents"]
        integration["source"]["pagination"]["limit"] = args.page_limit
        integration.update(fetch={"max_pages": 1_000_000}, mode="batched", batch_size=500)
        (home / "integrations.yaml").write_text(
            yaml.safe_dump({"integrations": {"incidents": integration}})
        )
        redis.Redis.from_url(args.redis).flushdb()
        os.environ.update(
            IHUB_HOME=str(home),
            IHUB_CONFIG=str(home / "integrations.yaml"),
            IHUB_DATABASE_URL=url,
            IHUB_BROKER_URL=args.redis,
            IHUB_SECRET_KEY=secrets.token_urlsafe(32),
            IHUB_DEMO_URL=source.url,
            IHUB_DEMO_SECRET=source.options.client_secret,
        )
        from models import db
        from models.migrate import upgrade

        upgrade(url)
        trips = [0]
        counting = _counting_cursor(trips)

        def count_cursors(dbapi_connection: Any, *_: Any) -> None:
            dbapi_connection.cursor_factory = counting

        def count_transaction(connection: Any) -> None:
            if not connection.connection.dbapi_connection.autocommit:
                trips[0] += 1

        # every statement sent is a round trip (a query string of two statements is one, and so
        # is a COPY), counted on the driver's cursors, which the driver SQL ihub sends on its
        # own (COPY, a chunk's claim and upsert) goes through as well; so are psycopg2's BEGIN
        # and a transaction's COMMIT, but in autocommit; the record path's connections are
        # the autocommit pool's from the third to the seventh wave, models.driver's since
        engines = [db.get_engine(url)]
        if hasattr(db, "autocommit_engine"):
            engines.append(db.autocommit_engine(url))
        for engine in engines:
            event.listen(engine, "checkout", count_cursors)
            event.listen(engine, "begin", count_transaction)
            event.listen(engine, "commit", count_transaction)
        _count_driver_connections(count_cursors)
        found = _measure(args.records, trips)
    finally:
        source.stop()
        from models.db import dispose_all

        dispose_all()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        redis.Redis.from_url(args.redis).flushdb()
    return found


def _measure(records: int, trips: list[int]) -> dict[str, Any]:
    from pipeline import batch, sync
    from pipeline.hub import Hub
    from tasks.app import get_app
    from tasks.records import publisher

    hub = Hub.from_env()
    publish = publisher(get_app(), hub, "incidents")
    published: list[int] = []

    def keep(row_ids: list[int]) -> None:
        published.extend(row_ids)
        publish(row_ids)

    trips[0], started, server = 0, time.perf_counter(), postgres_cpu()
    client = time.process_time()
    result = sync.fetch_delta(hub, "incidents", keep, owner="bench")
    fetch_s, fetch_trips = time.perf_counter() - started, trips[0]
    fetch_server_s, fetch_client_s = postgres_cpu() - server, time.process_time() - client
    assert result.staged == records, result
    rows = sorted(published)
    publish_us = _publish_cpu_us(rows[:PUBLISHED])
    half = len(rows) // 2
    single, chunked = rows[:half], rows[half:]

    trips[0], started, server = 0, time.perf_counter(), postgres_cpu()
    client = time.process_time()
    for row_id in single:
        delivery = sync.Delivery(token=f"s{row_id}", redelivered=False)
        assert sync.process_record(hub, row_id, delivery=delivery).status == "done"
    single_s, single_trips = time.perf_counter() - started, trips[0]
    single_server_s = postgres_cpu() - server
    single_client_s = time.process_time() - client

    trips[0], started, server = 0, time.perf_counter(), postgres_cpu()
    client = time.process_time()
    for start in range(0, len(chunked), 500):
        chunk = chunked[start : start + 500]
        delivery = sync.Delivery(token=f"b{start}", redelivered=False)
        assert len(batch.process_batch(hub, chunk, delivery=delivery).done) == len(chunk)
    batch_s, batch_trips = time.perf_counter() - started, trips[0]
    batch_server_s, batch_client_s = postgres_cpu() - server, time.process_time() - client
    chunks = (len(chunked) + 499) // 500
    return {
        "records": records,
        "fetch_per_s": round(records / fetch_s),
        "fetch_postgres_cpu_us": round(fetch_server_s * 1e6 / records, 1),
        "fetch_client_cpu_us": round(fetch_client_s * 1e6 / records, 1),
        "fetch_round_trips_per_page": round(fetch_trips / max(result.pages, 1), 1),
        "publish_record_task_cpu_us": publish_us,
        "per_record_ms": round(single_s * 1000 / len(single), 2),
        "per_record_round_trips": round(single_trips / len(single), 1),
        "per_record_postgres_cpu_ms": round(single_server_s * 1000 / len(single), 3),
        "per_record_client_cpu_ms": round(single_client_s * 1000 / len(single), 3),
        "batched_per_s": round(len(chunked) / batch_s),
        "batched_round_trips_per_chunk": round(batch_trips / chunks, 1),
        "batched_postgres_cpu_us": round(batch_server_s * 1e6 / len(chunked), 1),
        "batched_client_cpu_us": round(batch_client_s * 1e6 / len(chunked), 1),
    }


def _publish_cpu_us(row_ids: list[int]) -> float:
    """This process's CPU a ``process_record`` task published, as a per-record fetch publishes
    them (pages of 500), to the benchmark's Redis database, flushed afterwards (nothing
    consumes them)."""
    import redis

    from tasks.app import get_app
    from tasks.records import publish_records

    app = get_app()
    publish_records(app, row_ids[:10])  # the producer and the connection, made once
    client = time.process_time()
    for start in range(0, len(row_ids), 500):
        publish_records(app, row_ids[start : start + 500])
    spent = time.process_time() - client
    redis.Redis.from_url(str(app.conf.broker_url)).flushdb()
    return round(spent * 1e6 / max(len(row_ids), 1), 1)


def postgres_cpu() -> float:
    """User + system seconds of every Postgres server process on this host (Linux ``/proc``):
    the server's work, whatever the wall clock of a shared machine does."""
    ticks, total = os.sysconf("SC_CLK_TCK"), 0
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or not (entry / "cmdline").read_bytes().startswith(
                b"postgres"
            ):
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def _count_driver_connections(count_cursors: Any) -> None:
    """The record path's own kept connections (``models.driver``, where the checkout has it)
    count their statements on the same cursors."""
    try:
        from models import driver
    except ImportError:
        return
    connect = driver._connect

    def counted(url: str) -> Any:
        raw = connect(url)
        count_cursors(raw)
        return raw

    driver._connect = counted


def _counting_cursor(trips: list[int]) -> Any:
    """A psycopg2 cursor class that adds each statement it sends to ``trips``."""
    import psycopg2.extensions

    class CountingCursor(psycopg2.extensions.cursor):
        def execute(self, query: Any, vars: Any = None) -> Any:
            trips[0] += 1
            return super().execute(query, vars)

        def executemany(self, query: Any, vars_list: Any) -> Any:
            rows = list(vars_list)
            trips[0] += len(rows)  # psycopg2 sends one statement per row
            return super().executemany(query, rows)

        def copy_expert(self, sql: Any, file: Any, size: int = 8192) -> Any:
            trips[0] += 1
            return super().copy_expert(sql, file, size)

    return CountingCursor


def _claim(url: str) -> tuple[Any, str]:
    """The test suite's lock on this Redis database (as bench/e2e.py takes it): never flush a
    database a test run is using."""
    import redis

    base, db = url.rsplit("/", 1)
    if db in ("", "0"):
        raise SystemExit("--redis must name a database other than 0 (it is FLUSHED)")
    client, key = redis.Redis.from_url(f"{base}/0"), f"ihub-test-lock:{db}"
    if not client.set(key, f"stages-{os.getpid()}", nx=True, ex=3600):
        raise SystemExit(f"Redis db {db} is in use by a test run; pick another --redis db")
    return client, key


def _psycopg2(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg2://", 1)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/stages.py", description=__doc__)
    p.add_argument("--records", type=int, default=10000)
    p.add_argument("--page-limit", type=int, default=500)
    p.add_argument("--repo", default=str(HERE.parent), help="the ihub checkout to measure")
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/13", help="FLUSHED before, after")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
