"""How long the status page's queries take on a large ``ihub_records`` table in Postgres.

    python bench/dashboard_queries.py                      # 1,000,000 rows
    python bench/dashboard_queries.py --days 0.4 --json    # all of them today
    python bench/dashboard_queries.py --extra-index        # with the proposed index

Creates a database ``ihub_bench_dash_<random>``, migrates it, generates the rows with
``INSERT ... SELECT generate_series`` (4 integrations; 95 % done, 2 % dead with a dead letter
each, 1 % each retrying, pending and processing; finished times spread evenly over the last
``--days`` days; durations 0-500 ms), runs VACUUM ANALYZE, then times every function the page,
the JSON API, ``ihub status`` and ``/metrics`` call: the median of ``--repeat`` runs after one
warm-up. Drops the database at the end unless ``--keep``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from ihub import report  # noqa: E402
from ihub.web import metrics  # noqa: E402
from models import dashboard, migrate  # noqa: E402
from models.dashboard import DeadFilter  # noqa: E402
from models.db import dispose_all, get_engine, normalize_url  # noqa: E402
from pipeline.timefmt import utcnow  # noqa: E402

INTEGRATIONS = ("crm", "erp", "hr", "billing")
# The index this benchmark proposes (see --extra-index): windows over finished_at answered from
# the index alone, with the status, integration and duration they aggregate.
EXTRA_INDEX = (
    "CREATE INDEX ix_ihub_records_finished_cover ON ihub_records "
    "(finished_at) INCLUDE (status, integration, duration_ms)"
)

GENERATE = """
INSERT INTO ihub_records (integration, record_id, version, digest, payload, status, attempts,
    deliveries, created_at, started_at, finished_at, duration_ms, error_class, last_error, due_at)
SELECT (ARRAY['crm','erp','hr','billing'])[1 + i % 4],
       'r' || i, '2024-01-01T00:00:00.000000Z', md5(i::text), '{"id": ' || i || '}',
       s.status,
       CASE WHEN s.status = 'dead' THEN 5 WHEN s.status = 'retrying' THEN 2
            WHEN s.status = 'pending' THEN 0 ELSE 1 END,
       0, f.at - interval '1 second', f.at - interval '1 second',
       CASE WHEN s.status IN ('done', 'dead') THEN f.at END,
       CASE WHEN s.status = 'done' THEN round((random() * 500)::numeric, 3)::float8 END,
       CASE WHEN s.status IN ('dead', 'retrying') THEN
            (ARRAY['PermanentError','ValueError','TransientError'])[1 + i % 3] END,
       CASE WHEN s.status IN ('dead', 'retrying') THEN 'HTTP 422 for record ' || i END,
       CASE WHEN s.status IN ('pending', 'retrying', 'processing')
            THEN now() AT TIME ZONE 'UTC' + interval '5 minutes' END
FROM generate_series(1, :rows) AS i,
LATERAL (SELECT CASE WHEN i % 100 < 95 THEN 'done' WHEN i % 100 < 97 THEN 'dead'
                     WHEN i % 100 = 97 THEN 'retrying' WHEN i % 100 = 98 THEN 'pending'
                     ELSE 'processing' END AS status) AS s,
LATERAL (SELECT (now() AT TIME ZONE 'UTC')
                - (:span_seconds * (:rows - i) / :rows) * interval '1 second' AS at) AS f
"""
DEAD_LETTERS = """
INSERT INTO ihub_dead_letters (record_row_id, integration, record_id, version, error_class,
    message, traceback, attempts, first_failed_at, last_failed_at, requeue_count, active)
SELECT id, integration, record_id, version, error_class, last_error, 'Traceback ...', attempts,
       finished_at, finished_at, 0, true
FROM ihub_records WHERE status = 'dead'
"""
RUNS = """
INSERT INTO ihub_fetch_runs (integration, started_at, finished_at, status, pages, fetched, staged)
SELECT (ARRAY['crm','erp','hr','billing'])[1 + i % 4],
       (now() AT TIME ZONE 'UTC') - i * interval '1 minute',
       (now() AT TIME ZONE 'UTC') - i * interval '1 minute' + (i % 30) * interval '1 second',
       CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'ok' END, 1, 100, 100
FROM generate_series(1, 10000) AS i
"""
STATES = """
INSERT INTO ihub_integrations (name, watermark_updated, watermark_id, status, last_fetch_at,
    last_success_at, updated_at)
SELECT n, '2024-01-01T00:00:00.000000Z', '1', 'active', now() AT TIME ZONE 'UTC',
       now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'
FROM unnest(ARRAY['crm','erp','hr','billing']) AS n
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=10.0, help="spread finished times over")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--extra-index", action="store_true", help="add EXTRA_INDEX first")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    name = f"ihub_bench_dash_{secrets.token_hex(4)}"
    admin = create_engine(normalize_url(args.pg), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(args.pg).set(database=name).render_as_string(hide_password=False)
    try:
        started = time.perf_counter()
        _populate(url, args.rows, args.days, args.extra_index)
        print(f"populated {args.rows:,} rows in {time.perf_counter() - started:.1f} s", flush=True)
        results = _measure(url, args.repeat)
    finally:
        dispose_all()
        if args.keep:
            print(f"kept database {name}")
        else:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    width = max(len(k) for k in results)
    for key, ms in results.items():
        print(f"{key:<{width}}  {ms:9.1f} ms")
    if args.json:
        print(json.dumps({"rows": args.rows, "days": args.days, "ms": results}))
    return 0


def _populate(url: str, rows: int, days: float, extra_index: bool) -> None:
    migrate.upgrade(url)
    engine = get_engine(url)
    with engine.begin() as connection:
        connection.execute(text(GENERATE), {"rows": rows, "span_seconds": days * 86400})
        connection.execute(text(DEAD_LETTERS))
        connection.execute(text(RUNS))
        connection.execute(text(STATES))
        if extra_index:
            connection.execute(text(EXTRA_INDEX))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))


def _measure(url: str, repeat: int) -> dict[str, float]:
    now = utcnow()
    midnight = report.midnight(now)
    hour_ago = now.replace(minute=0, second=0, microsecond=0)
    cases: dict[str, Callable[[], Any]] = {
        "page / (collect_status, all widgets)": lambda: report.collect_status(url, None, now=now),
        "  integrations overview": lambda: report.integrations_overview(url, now),
        "  success rate (today + 24 h)": lambda: report.success_rate(url, now, 24),
        "  processing time (today + 24 h)": lambda: report.processing_time(url, now, 24),
        "  errors today": lambda: report.errors_today(url, now),
        "  throughput (3 h per minute)": lambda: report.throughput(url, now, 3),
        "success rate, 7 d window": lambda: report.success_rate(url, now, 168),
        "processing time, 7 d window": lambda: report.processing_time(url, now, 168),
        "dead letters page (no filter)": lambda: dashboard.dead_letters(url, DeadFilter()),
        "dead letters by integration": lambda: dashboard.dead_letters(
            url, DeadFilter(integration="crm")
        ),
        "dead letters by error class + since": lambda: dashboard.dead_letters(
            url, DeadFilter(error_class="ValueError", since=midnight)
        ),
        "dead letter facets (filter menus)": lambda: dashboard.dead_facets(url),
        "requeue selection ids (1 h filter)": lambda: dashboard.dead_ids(
            url, DeadFilter(since=hour_ago)
        ),
        "/metrics (whole scrape)": lambda: metrics.render(url, None),
    }
    results: dict[str, float] = {}
    for key, run in cases.items():
        run()  # warm-up: connection, plan cache, buffers
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            run()
            times.append((time.perf_counter() - started) * 1000)
        results[key] = statistics.median(times)
        print(f"  measured {key.strip()}", file=sys.stderr, flush=True)
    return results


if __name__ == "__main__":
    sys.exit(main())
