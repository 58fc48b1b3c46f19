"""The ceilings for bench/e2e.py: a Celery app whose tasks do (almost) nothing, or one write.

It takes ihub's exact Celery settings, loaded as ihub loads them (``tasks.conf``: acks_late,
prefetch 1, the same queues and routing, task events, JSON) and ihub's broker
(``IHUB_BROKER_URL``), so the gap between its rate and ihub's is the cost of ihub's own work:
the database round trips, the sink upsert and the bookkeeping per record.

There is no result backend (as in ihub): each task counts itself with one Redis ``INCR`` on
the broker's database, and the benchmark polls that counter. Start a worker with
``celery -A noop_tasks worker`` with this directory on ``PYTHONPATH``.

``bench.write`` is the floor under any design with one task per record and an exactly-once
effect: besides the no-op's work it makes one version-guarded upsert of a demo-sized row,
committed, on a connection its process keeps (``IHUB_BENCH_WRITE_DSN``). It reads nothing and
keeps no books: no staged row, no done mark, no metrics.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg2
import redis
from celery import Celery

from tasks.conf import load_celeryconfig

COUNTER = "ihub-bench:noop:done"
TASK = "bench.noop"
WRITE_COUNTER = "ihub-bench:write:done"
WRITE_TASK = "bench.write"
WRITE_TABLE = "bench_write_floor"
# the demo record's size as JSON (about 220 characters), so the row is as wide as ihub's
ROW = '{"short_description": "license requested", "state": "new", "priority": 1}' * 3

app = Celery("ihub_bench_noop")
load_celeryconfig(app)  # as ihub's app loads it
app.conf.broker_url = os.environ.get("IHUB_BROKER_URL") or "redis://127.0.0.1:6379/14"

_client: tuple[int, redis.Redis] | None = None
_writer: tuple[int, Any] | None = None


def counter_client() -> redis.Redis:
    """One Redis client per process (pool children must not share the parent's sockets)."""
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), redis.Redis.from_url(str(app.conf.broker_url)))
    return _client[1]


@app.task(name=TASK, acks_late=True, ignore_result=True)
def noop(row_id: int) -> None:
    """Takes a row id like ``ihub.process_record`` and only records that it ran."""
    counter_client().incr(COUNTER)


def writer() -> Any:
    """One autocommit Postgres connection per process, kept like ihub's ``models.driver``."""
    global _writer
    if _writer is None or _writer[0] != os.getpid():
        connection = psycopg2.connect(os.environ["IHUB_BENCH_WRITE_DSN"])
        connection.autocommit = True
        _writer = (os.getpid(), connection)
    return _writer[1]


def create_write_table(dsn: str) -> None:
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {WRITE_TABLE}"
            " (id bigint PRIMARY KEY, version text NOT NULL, payload text NOT NULL)"
        )
    connection.close()


@app.task(name=WRITE_TASK, acks_late=True, ignore_result=True)
def write(row_id: int) -> None:
    """The no-op's work and one durable, idempotent write: the least a record's task can do."""
    with writer().cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {WRITE_TABLE} (id, version, payload) VALUES (%s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET version = excluded.version,"
            f" payload = excluded.payload WHERE {WRITE_TABLE}.version < excluded.version",
            (row_id, "2026-12-07T00:00:00Z", ROW),
        )
    counter_client().incr(WRITE_COUNTER)
