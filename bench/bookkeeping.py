"""The least bookkeeping a staged record costs in ihub's schema, in the whole machine's CPU.

    python bench/bookkeeping.py [--records 100000] [--chunk 500] [--pg URL]

What batched mode must do for a record beyond the staged floor (bench/e2e.py's (d')), in
plain statements on a freshly migrated database of its own (created and dropped), committed
once a chunk: (1) the row into ``ihub_records`` by ``COPY``, with that table's indexes (the
reconciler's, the dashboard's, the dead letters'), next to the same rows into a table with a
key and no index, as the staged floor writes them; (2) the record's latest version and digest
into ``ihub_latest``, which dedupe reads (``COPY``); (3) the done mark (``UPDATE ... WHERE id =
ANY``), which the per-record metrics and retention read. No Celery, no dedupe read, no
rollups, no sink write. Prints one JSON object: each step's CPU a record (us), counted as
``machine_cpu_us`` of bench/e2e.py counts it (the busy time of every core), and
``beyond_plain_staging``, what (1), (2) and (3) add to the staged floor's own write.
"""

from __future__ import annotations

import argparse
import io
import json
import secrets
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import libpq_dsn
from machine import busy_seconds

PAYLOAD = json.dumps(
    {
        "details": {"category": "network", "tags": ["db", "vpn"]},
        "number": 1,
        "priority": 2,
        "short_description": "printer fails to start",
        "state": "new",
        "updated_at": "2026-12-07T10:00:00Z",
        "version": 1,
    },
    sort_keys=True,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)
    import psycopg2

    from models.migrate import upgrade

    name = f"ihub_bookkeeping_{secrets.token_hex(4)}"
    admin = psycopg2.connect(libpq_dsn(args.pg))
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    url = args.pg.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        connection = psycopg2.connect(libpq_dsn(url))
        try:
            found = _measure(connection, args.records, args.chunk)
        finally:
            connection.close()
        from models.db import dispose_all

        dispose_all()
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    print(json.dumps({"records": args.records, "chunk": args.chunk, "machine_cpu_us": found}))
    return 0


def _measure(connection: Any, records: int, chunk: int) -> dict[str, float]:
    with connection, connection.cursor() as cursor:  # the staged floor's table: a key, no index
        cursor.execute(
            "CREATE TABLE plain_staged (id bigint PRIMARY KEY, integration text, record_id text,"
            " version text, digest text, payload text, status text, attempts int,"
            " deliveries int, due_at timestamp, created_at timestamp)"
        )
    starts = range(1, records + 1, chunk)
    spent: dict[str, float] = {}

    def step(label: str, run: Any) -> None:
        before = busy_seconds() or 0.0
        for first in starts:
            with connection, connection.cursor() as cursor:
                run(cursor, list(range(first, min(first + chunk, records + 1))))
        spent[label] = round(((busy_seconds() or 0.0) - before) * 1e6 / records, 1)

    def stage(cursor: Any, ids: list[int], table: str = "ihub_records") -> None:
        lines = "".join(
            f"{i}\tbench\tREC{i:07d}\t2026-12-07T10:00:00.000000Z\t{i:032x}\t{PAYLOAD}\tpending"
            "\t0\t0\t2026-12-07T10:00:00\t2026-12-07T10:00:00\n"
            for i in ids
        )
        cursor.copy_expert(
            f"COPY {table} (id, integration, record_id, version, digest, payload, status,"
            " attempts, deliveries, due_at, created_at) FROM STDIN",
            io.StringIO(lines),
        )

    def latest(cursor: Any, ids: list[int]) -> None:
        lines = "".join(
            f"bench\tREC{i:07d}\t2026-12-07T10:00:00.000000Z\t{i:032x}\t{i}\n" for i in ids
        )
        cursor.copy_expert(
            "COPY ihub_latest (integration, record_id, version, digest, row_id) FROM STDIN",
            io.StringIO(lines),
        )

    def done(cursor: Any, ids: list[int]) -> None:
        cursor.execute(
            "UPDATE ihub_records SET status = 'done', attempts = attempts + 1,"
            " finished_at = now() AT TIME ZONE 'utc', duration_ms = 1.0 WHERE id = ANY(%s)",
            (ids,),
        )

    def plain(cursor: Any, ids: list[int]) -> None:
        stage(cursor, ids, table="plain_staged")

    step("plain_stage_row", plain)
    step("stage_row", stage)
    step("latest_row", latest)
    step("done_mark", done)
    extra = spent["stage_row"] - spent["plain_stage_row"] + spent["latest_row"]
    spent["beyond_plain_staging"] = round(extra + spent["done_mark"], 1)
    return spent


if __name__ == "__main__":
    sys.exit(main())
