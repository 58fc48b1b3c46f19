"""The ceiling for bench/e2e.py: a Celery app whose only task does (almost) nothing.

It takes ihub's exact Celery settings (``config_from_object("celeryconfig")``: acks_late,
prefetch 1, the same queues and routing, task events, JSON) and ihub's broker
(``IHUB_BROKER_URL``), so the gap between its rate and ihub's is the cost of ihub's own work:
the database round trips, the sink upsert and the bookkeeping per record.

There is no result backend (as in ihub): each task counts itself with one Redis ``INCR`` on
the broker's database, and the benchmark polls that counter. Start a worker with
``celery -A noop_tasks worker`` with this directory on ``PYTHONPATH``.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

COUNTER = "ihub-bench:noop:done"
TASK = "bench.noop"

app = Celery("ihub_bench_noop")
app.config_from_object("celeryconfig")
app.conf.broker_url = os.environ.get("IHUB_BROKER_URL") or "redis://127.0.0.1:6379/14"

_client: tuple[int, redis.Redis] | None = None


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
