"""Mark rows done and count them in the minute's rollup: one statement on PostgreSQL.

Every record ends here, so its cost is paid per record. Two statements (the UPDATE, then the
rollup upsert) are two round trips; as data-modifying CTEs of one statement they are one, and
Postgres runs both to completion in the caller's transaction all the same. ``done_then`` gives
the statement as driver SQL, for a sink of the same database to send in one query string with
its write: one round trip and one commit for write, done and rollup.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.dialects.postgresql import psycopg2
from sqlalchemy.orm import Session

from models.prepared import Statement
from models.rollups import COUNTERS, bucket_column, minute_of, this_shard
from models.schema import OPEN, RecordStatus, others_than, sql_list
from models.values import utcnow


def mark_done(
    session: Session,
    row_ids: list[int],
    duration_ms: float,
    now: datetime,
    *,
    claim: dict[str, Any] | None = None,
) -> int:
    """Mark the open rows among ``row_ids`` done, each with ``duration_ms``, and count them in
    this minute's rollup (this process's shard); how many were open. ``claim`` (``token``,
    ``started``): the rows were locked, not claimed, by this transaction; count the attempt
    and record the claim in the same write."""
    statement = _statement(bucket_column(duration_ms), claimed_here=claim is not None)
    params = _params(row_ids, duration_ms, now, claim)
    return int(session.execute(statement, params).scalar_one())


# the types of the parameters a prepared done mark cannot infer (two in its SELECT list, one
# used twice)
DONE_TYPES = {
    "_ihub_ids": "bigint[]",
    "_ihub_now": "timestamp",
    "_ihub_ms": "double precision",
    "_ihub_minute": "timestamp",
    "_ihub_shard": "integer",
}


def done_then(row_id: int, duration_ms: float, *, claim: dict[str, Any] | None = None) -> Statement:
    """``mark_done`` of one row as psycopg2 SQL and its parameters, for a sink write of the
    same database to run in its transaction (``SqlSink.upsert(then=...)``). The parameter
    names start with ``_ihub_``, which no sink column may take for its own. ``claim`` as in
    ``mark_done``: the row was read, not claimed (``models.peek``)."""
    sql = _driver_sql(bucket_column(duration_ms), claim is not None)
    return Statement(sql, _params([row_id], duration_ms, utcnow(), claim), DONE_TYPES)


def _params(
    row_ids: list[int], duration_ms: float, now: datetime, claim: dict[str, Any] | None
) -> dict[str, Any]:
    params = {
        "_ihub_ids": row_ids,
        "_ihub_now": now,
        "_ihub_ms": duration_ms,
        "_ihub_minute": minute_of(now),
        "_ihub_shard": this_shard(),
    }
    if claim is not None:
        params.update(_ihub_token=claim["token"], _ihub_started=claim["started"])
    return params


@functools.cache
def _driver_sql(bucket: str, claimed_here: bool = False) -> str:
    return str(_statement(bucket, claimed_here).compile(dialect=psycopg2.dialect()))


@functools.cache
def _statement(bucket: str, claimed_here: bool = False) -> TextClause:
    """Built once per duration bucket: the counters are literals of the statement."""
    claim = (
        "attempts = attempts + 1, claim_token = :_ihub_token, started_at = :_ihub_started,"
        if claimed_here
        else ""
    )
    counts = {name: "0" for name in COUNTERS}
    counts.update(done="n", duration_count="n", duration_sum_ms="n * :_ihub_ms")
    counts[bucket] = "n"
    columns = ", ".join(COUNTERS)
    values = ", ".join(counts[name] for name in COUNTERS)
    sums = ", ".join(f"{name} = ihub_rollups.{name} + excluded.{name}" for name in COUNTERS)
    return text(
        f"""
        WITH done AS (
            UPDATE ihub_records SET {claim} status = '{RecordStatus.DONE}',
                finished_at = :_ihub_now,
                duration_ms = :_ihub_ms, due_at = NULL, last_error = NULL, error_class = NULL
            WHERE id = ANY(:_ihub_ids) AND status NOT IN {sql_list(others_than(OPEN))}
            RETURNING integration
        ), counted AS (
            SELECT integration, count(*) AS n FROM done GROUP BY integration
        ), rolled AS (
            INSERT INTO ihub_rollups (integration, minute, shard, {columns})
            SELECT integration, :_ihub_minute, :_ihub_shard, {values} FROM counted
            ON CONFLICT (integration, minute, shard) DO UPDATE SET {sums}
        )
        SELECT coalesce(sum(n), 0) FROM counted
        """
    )
