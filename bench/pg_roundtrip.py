"""What one round trip to Postgres costs on this machine, in the server's CPU and in wall time.

    python bench/pg_roundtrip.py [--pg URL] [--statements 3000]

A per-record task is two round trips (the claim; the upsert with the done mark), so their cost
is the floor under the per-record rate. On a database of its own (created and dropped), one
autocommit connection runs each statement below ``--statements`` times and prints the server
process's CPU per statement (its ``/proc`` times: Linux, and the server on this host) and the
client's wall time per statement: an empty ``SELECT 1``, a one-row ``UPDATE`` whose commit is
waited on (``synchronous_commit`` on, as for ihub's done mark), and the same not waited on (as
for ihub's claim).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK")


def server_cpu(pid: int) -> float:
    """User + system seconds of one server process."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def main(argv: list[str] | None = None) -> int:
    import psycopg2

    args = _parse(argv)
    name = f"ihub_roundtrip_{secrets.token_hex(4)}"
    admin = psycopg2.connect(args.pg)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        connection = psycopg2.connect(args.pg.rsplit("/", 1)[0] + f"/{name}")
        connection.autocommit = True
        try:
            _measure(connection, args.statements)
        finally:
            connection.close()
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    return 0


def _measure(connection: Any, n: int) -> None:
    cursor = connection.cursor()
    pid = connection.get_backend_pid()
    cursor.execute("CREATE TABLE rows (id int PRIMARY KEY, n int, body text)")
    cursor.execute(
        "INSERT INTO rows SELECT g, 0, repeat('x', 300) FROM generate_series(1, %s) g", (n,)
    )
    cases = [
        ("SELECT 1", "SELECT 1"),
        ("UPDATE one row, commit waited on", "UPDATE rows SET n = n + 1 WHERE id = %(id)s"),
        (
            "UPDATE one row, commit not waited on",
            "SET LOCAL synchronous_commit = off; UPDATE rows SET n = n + 1 WHERE id = %(id)s",
        ),
    ]
    print(f"{'statement':40s} {'server CPU':>12s} {'wall':>10s}   ({n} each)")
    for label, sql in cases:
        cpu, wall = server_cpu(pid), time.perf_counter()
        for row_id in range(1, n + 1):
            cursor.execute(sql, {"id": row_id})
        cpu, wall = server_cpu(pid) - cpu, time.perf_counter() - wall
        print(f"{label:40s} {cpu / n * 1e6:9.0f} us {wall / n * 1e6:7.0f} us")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/pg_roundtrip.py", description=__doc__)
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--statements", type=int, default=3000)
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
