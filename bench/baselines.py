"""What bench/e2e.py measures ihub against: the no-op Celery ceiling, the same tasks with one
committed write each, a plain psycopg2 ``execute_values`` upsert of the same rows, and dlt's
``rest_api`` merge load (when installed)."""

from __future__ import annotations

import gc
import importlib.util
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from parts import BenchError, Deadline, Workers, say
from stages import postgres_cpu

BENCH = Path(__file__).resolve().parent


def ceilings(
    bench: Any, env: dict[str, str], modes: list[str], layout: tuple[int, int, int, str]
) -> tuple[float, float | None]:
    """The no-op ceiling, and the write ceiling when ``modes`` has per-record: tasks a second
    over ``layout`` (tasks, workers, concurrency, pool)."""
    ceiling = noop_ceiling(bench, env, *layout)
    return ceiling, write_ceiling(bench, env, *layout) if "per-record" in modes else None


def upserts(bench: Any, modes: list[str], page_limit: int) -> tuple[float, Floor | None]:
    """The ``execute_values`` upsert of the source's records (rows a second), and the staged
    floor when ``modes`` has batched."""
    records = list(bench.source.snapshot().values())
    with bench.cpu.phase("batch_upsert", len(records)):
        upsert = execute_values_upsert(bench.db_url, records, bench.deadline)
    if "batched" not in modes:
        return upsert, None
    token = bench.source_token()
    gc.collect()  # untimed, as before each load: a full collection is the harness's, not ours
    with bench.cpu.phase("staged_floor", len(records)):
        floor = staged_floor(bench.source, bench.db_url, token, page_limit, bench.deadline)
    return upsert, floor


def noop_ceiling(
    bench: Any, env: dict[str, str], n: int, workers: int, concurrency: int, pool: str
) -> float:
    """N no-op tasks through the same Celery settings, broker and workers x concurrency; the
    tasks per second from the first publish to the last one counted."""
    noop_tasks = _ceiling_app()
    task = (noop_tasks.TASK, noop_tasks.COUNTER)
    return _ceiling(bench, env, n, (workers, concurrency, pool), task, "no-op")


def write_ceiling(
    bench: Any, env: dict[str, str], n: int, workers: int, concurrency: int, pool: str
) -> float:
    """As ``noop_ceiling``, each task also making one committed upsert into the bench's own
    database (``noop_tasks.write``): the floor under a one-task-per-record design."""
    noop_tasks = _ceiling_app()
    dsn = libpq_dsn(bench.db_url)
    noop_tasks.create_write_table(dsn)
    layout = (workers, concurrency, pool)
    env = {**env, "IHUB_BENCH_WRITE_DSN": dsn}
    task = (noop_tasks.WRITE_TASK, noop_tasks.WRITE_COUNTER)
    return _ceiling(bench, env, n, layout, task, "write")


def _ceiling_app() -> Any:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import noop_tasks

    return noop_tasks


def _ceiling(
    bench: Any,
    env: dict[str, str],
    n: int,
    layout: tuple[int, int, str],
    task: tuple[str, str],
    label: str,
) -> float:
    """N tasks named ``task[0]``, each counting itself in the Redis key ``task[1]``."""
    noop_tasks = _ceiling_app()
    (name, counter), (workers, concurrency, pool) = task, layout
    bench.redis.flushdb()
    path = os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH")]))
    env = {**env, "PYTHONPATH": path}
    prefix = label.replace("-", "")
    group = Workers("noop_tasks", prefix, workers, concurrency, env, bench.tmp, pool)
    bench.workers.append(group)
    group.start()
    took = group.wait_ready(noop_tasks.app, bench.deadline)
    say(f"{label + ':':<12}{workers} worker(s) x {concurrency} ({pool}) ready in {took:.1f}s")
    bench.redis.delete(counter)
    from tasks.publishing import publish_each  # the way ihub publishes

    def progress() -> tuple[bool, str]:
        count = int(bench.redis.get(counter) or 0)
        return count >= n, f"  {label:<7} {time.monotonic() - started:7.1f}s  done={count}/{n}"

    with bench.cpu.phase("ceiling" if label == "no-op" else "write_ceiling", n):
        started = time.monotonic()
        publish_each(noop_tasks.app, name, ((i,) for i in range(n)))
        say(f"  publish {time.monotonic() - started:7.1f}s  {n} {label} task(s) published")
        done = bench.wait(progress, f"waiting for the {label} tasks")
    group.stop()
    return n / max(done - started, 1e-6)


def libpq_dsn(db_url: str) -> str:
    """A libpq connection string for psycopg2 from the bench's SQLAlchemy URL."""
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    parts = {
        "host": url.host,
        "port": url.port or 5432,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
    }
    return " ".join(f"{k}={v}" for k, v in parts.items() if v is not None)


def execute_values_upsert(db_url: str, records: list[dict[str, Any]], deadline: Deadline) -> float:
    """The same rows written with psycopg2's ``execute_values`` and a version-guarded
    ``ON CONFLICT DO UPDATE``, 1,000 rows a statement, one transaction: rows per second."""
    import psycopg2
    from psycopg2.extras import execute_values

    columns = sorted({k for r in records for k in r})
    rows = _plain_rows(records, columns)
    connection = psycopg2.connect(libpq_dsn(db_url))
    try:
        with connection, connection.cursor() as cursor:
            upsert = _plain_table(cursor, "plain_upsert", columns)
        started = time.monotonic()
        with connection, connection.cursor() as cursor:
            execute_values(cursor, upsert, rows, page_size=1000)
        took = time.monotonic() - started
        deadline.check("the execute_values upsert")
    finally:
        connection.close()
    return len(rows) / max(took, 1e-6)


class Floor(NamedTuple):
    """The staged floor's rate, and the CPU it cost a record: this process's and every Postgres
    server process's (not the demo source's, which serves from a process of its own)."""

    per_s: float
    cpu_s: float


def staged_floor(
    source: Any, db_url: str, token: str, page_limit: int, deadline: Deadline
) -> Floor:
    """The least a design that stages every record durably before writing it does, in one
    process, no Celery: each page read over HTTP and parsed, ``COPY``'d into a staging table
    and committed, then upserted as in ``execute_values_upsert`` and committed. No dedupe, no
    done marks, no metrics, no tasks: records per second, first request to last commit."""
    import psycopg2
    import requests
    from psycopg2.extras import execute_values

    columns = sorted({k for r in source.snapshot().values() for k in r})
    connection = psycopg2.connect(libpq_dsn(db_url))
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {token}"
    params: dict[str, Any] = {"limit": page_limit}
    staged = 0
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(
                "CREATE TABLE floor_staged (id bigserial PRIMARY KEY, record_id text NOT NULL,"
                " version text NOT NULL, payload text NOT NULL)"
            )
            upsert = _plain_table(cursor, "floor_target", columns)
        started, cpu = time.monotonic(), time.process_time() + postgres_cpu()
        while True:
            reply = http.get(f"{source.url}/api/records", params=params, timeout=60)
            reply.raise_for_status()
            body = reply.json()
            records = body["data"]
            lines = io.StringIO()
            for r in records:
                payload = json.dumps(r, sort_keys=True).replace("\\", "\\\\")
                lines.write(f"{r['id']}\t{r['updated_at']}\t{payload}\n")
            lines.seek(0)
            with connection, connection.cursor() as cursor:
                cursor.copy_expert(
                    "COPY floor_staged (record_id, version, payload) FROM STDIN", lines
                )
            with connection, connection.cursor() as cursor:
                rows = _plain_rows(records, columns, first=staged)
                execute_values(cursor, upsert, rows, page_size=len(rows) or 1)
            staged += len(records)
            deadline.check("the staged floor")
            if not body.get("next_cursor"):
                break
            params = {"limit": page_limit, "cursor": body["next_cursor"]}
        took = time.monotonic() - started
        cpu = time.process_time() + postgres_cpu() - cpu
    finally:
        connection.close()
        http.close()
    return Floor(staged / max(took, 1e-6), cpu / max(staged, 1))


def _plain_rows(
    records: list[dict[str, Any]], columns: list[str], first: int = 0
) -> list[tuple[Any, ...]]:
    """Rows of text for ``_plain_table``, each with its version last."""
    return [
        (*tuple(_plain(r.get(c)) for c in columns), f"{r['updated_at']}|{i:020d}")
        for i, r in enumerate(records, start=first)
    ]


def _plain_table(cursor: Any, table: str, columns: list[str]) -> str:
    """Create ``table``, a text column each, and return its version-guarded upsert."""
    kinds = ", ".join(f'"{c}" text' for c in columns if c != "id")
    cursor.execute(f'CREATE TABLE {table} ("id" text PRIMARY KEY, {kinds}, "_v" text NOT NULL)')
    names = ", ".join(f'"{c}"' for c in columns)
    updates = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c != "id")
    return (
        f'INSERT INTO {table} ({names}, "_v") VALUES %s '
        f'ON CONFLICT (id) DO UPDATE SET {updates}, "_v" = excluded."_v" '
        f"WHERE {table}._v < excluded._v"
    )


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
