"""What bench/e2e.py measures ihub against: the no-op Celery ceiling, a plain psycopg2
``execute_values`` upsert of the same rows, and dlt's ``rest_api`` merge load (when installed)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from parts import BenchError, Deadline, Workers, say

BENCH = Path(__file__).resolve().parent


def noop_ceiling(
    bench: Any, env: dict[str, str], n: int, workers: int, concurrency: int, pool: str
) -> float:
    """N no-op tasks through the same Celery settings, broker and workers x concurrency; the
    tasks per second from the first publish to the last one counted."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import noop_tasks

    bench.redis.flushdb()
    path = os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH")]))
    group = Workers(
        "noop_tasks", "noop", workers, concurrency, {**env, "PYTHONPATH": path}, bench.tmp, pool
    )
    bench.workers.append(group)
    group.start()
    took = group.wait_ready(noop_tasks.app, bench.deadline)
    say(f"no-op:      {workers} worker(s) x {concurrency} ({pool}) ready in {took:.1f}s")
    bench.redis.delete(noop_tasks.COUNTER)
    from tasks.publishing import publish_each  # the way ihub publishes

    started = time.monotonic()
    publish_each(noop_tasks.app, noop_tasks.TASK, ((i,) for i in range(n)))
    say(f"  publish {time.monotonic() - started:7.1f}s  {n} no-op task(s) published")

    def progress() -> tuple[bool, str]:
        count = int(bench.redis.get(noop_tasks.COUNTER) or 0)
        return count >= n, f"  no-op   {time.monotonic() - started:7.1f}s  done={count}/{n}"

    done = bench.wait(progress, "waiting for the no-op tasks")
    group.stop()
    return n / max(done - started, 1e-6)


def execute_values_upsert(db_url: str, records: list[dict[str, Any]], deadline: Deadline) -> float:
    """The same rows written with psycopg2's ``execute_values`` and a version-guarded
    ``ON CONFLICT DO UPDATE``, 1,000 rows a statement, one transaction: rows per second."""
    import psycopg2
    from psycopg2.extras import execute_values
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    columns = sorted({k for r in records for k in r})
    rows = [
        (*tuple(_plain(r.get(c)) for c in columns), f"{r['updated_at']}|{i:020d}")
        for i, r in enumerate(records)
    ]
    names = ", ".join(f'"{c}"' for c in columns)
    updates = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c != "id")
    connection = psycopg2.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password,
        dbname=url.database,
    )  # fmt: skip
    try:
        with connection, connection.cursor() as cursor:
            kinds = ", ".join(f'"{c}" text' for c in columns if c != "id")
            cursor.execute(
                f'CREATE TABLE plain_upsert ("id" text PRIMARY KEY, {kinds}, "_v" text NOT NULL)'
            )
        started = time.monotonic()
        with connection, connection.cursor() as cursor:
            execute_values(
                cursor,
                f'INSERT INTO plain_upsert ({names}, "_v") VALUES %s '
                f'ON CONFLICT (id) DO UPDATE SET {updates}, "_v" = excluded."_v" '
                "WHERE plain_upsert._v < excluded._v",
                rows,
                page_size=1000,
            )
        took = time.monotonic() - started
        deadline.check("the execute_values upsert")
    finally:
        connection.close()
    return len(rows) / max(took, 1e-6)


def _plain(value: Any) -> Any:
    return (
        json.dumps(value, sort_keys=True)
        if isinstance(value, dict | list)
        else (None if value is None else str(value))
    )


def dlt_merge(source: Any, db_url: str, token: str) -> float | None:
    """dlt's ``rest_api`` source, merge write disposition, into the same Postgres: records per
    second for the whole pipeline run; None (with a note) when dlt is not installed."""
    if importlib.util.find_spec("dlt") is None:
        say("dlt:        not installed (pip install -e '.[bench]'); skipped")
        return None
    try:
        return _dlt_run(source, db_url, token)
    except Exception as exc:  # a figure we cannot get must not cost the others
        say(f"dlt:        failed ({type(exc).__name__}: {str(exc)[:200]}); skipped")
        return None


def _dlt_run(source: Any, db_url: str, token: str) -> float:
    import dlt
    from dlt.sources.rest_api import rest_api_source
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    if url.password is None:  # dlt insists on one; a trust-auth server ignores it
        url = url.set(password="unused")
    credentials = url.set(drivername="postgresql").render_as_string(hide_password=False)

    config: Any = {
        "client": {
            "base_url": f"{source.url}/api/",
            "auth": {"type": "bearer", "token": token},
            "paginator": {
                "type": "cursor",
                "cursor_path": "next_cursor",
                "cursor_param": "cursor",
            },
        },
        "resources": [
            {
                "name": "records",
                "endpoint": {
                    "path": "records",
                    "data_selector": "data",
                    "params": {"limit": 1000},
                },
                "primary_key": "id",
                "write_disposition": "merge",
            }
        ],
    }
    pipeline = dlt.pipeline(
        pipeline_name=f"ihub_bench_{os.getpid()}",
        destination=dlt.destinations.postgres(credentials=credentials),
        dataset_name="dlt_bench",
        pipelines_dir=str(Path(os.environ.get("IHUB_HOME", ".")) / "dlt"),
    )
    started = time.monotonic()
    info = pipeline.run(rest_api_source(config))
    took = time.monotonic() - started
    loaded = pipeline.last_trace.last_normalize_info.row_counts.get("records", 0)
    if loaded <= 0:
        raise BenchError(f"dlt loaded no records: {info}")
    return loaded / max(took, 1e-6)
