"""A waiting row read without being claimed: the first delivery's path on Postgres.

A claim is a write (status, attempt, holder, deadline) that touches every index of
``ihub_records``, and the done mark writes the row again right after it. When the sink is a
table of the same database, a first delivery reads the row instead and lets the done mark,
sent in one query string with the sink's write, count the attempt and name the holder:
each record is written once, not twice (bench/README.md, "What each optimisation changed").

What the written claim gave is kept otherwise: a redelivered message (its worker was lost)
takes the written claim, so a record that kills its worker is still counted; a write that
fails takes it too, before its retry or dead letter; and two copies of one task running at
once both reach the version-guarded upsert, where the later changes nothing, while the done
mark ends the row once.
"""

from __future__ import annotations

import functools

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import psycopg2

from models import driver, prepared
from models.queue import CLAIMED, Claim, S
from models.schema import others_than, sql_list

_PEEK_WAITING = text(
    f"SELECT {', '.join(column.key for column in CLAIMED)} FROM ihub_records"
    f" WHERE id = :row_id AND status NOT IN {sql_list(others_than((S.PENDING, S.RETRYING)))}"
)


def peek_waiting(database_url: str, row_id: int) -> Claim | None:
    """The row as a claim if it waits (pending or retrying), read in one round trip and
    written by nobody; None when it is held or finished (the written claim decides then)."""
    statement = prepared.Statement(_peek_sql(), {"row_id": row_id})
    with driver.connection(database_url) as connection:
        row = prepared.send(connection, [statement]).row
    return None if row is None else Claim.of_values(row)


@functools.cache
def _peek_sql() -> str:
    return str(_PEEK_WAITING.compile(dialect=psycopg2.dialect()))
