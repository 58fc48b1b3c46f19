"""Mark rows done and count them in the minute's rollup: one statement on PostgreSQL.

Every record ends here, so its cost is paid per record. Two statements (the UPDATE, then the
rollup upsert) are two round trips; as data-modifying CTEs of one statement they are one, and
Postgres runs both to completion in the caller's transaction all the same.
"""

from __future__ import annotations

import functools
from datetime import datetime

from sqlalchemy import TextClause, text
from sqlalchemy.orm import Session

from models.rollups import COUNTERS, bucket_column, minute_of, this_shard
from models.schema import OPEN, RecordStatus


def mark_done(session: Session, row_ids: list[int], duration_ms: float, now: datetime) -> int:
    """Mark the open rows among ``row_ids`` done, each with ``duration_ms``, and count them in
    this minute's rollup (this process's shard); how many were open."""
    bucket = bucket_column(duration_ms)
    params = {
        "ids": row_ids,
        "now": now,
        "ms": duration_ms,
        "minute": minute_of(now),
        "shard": this_shard(),
    }
    return int(session.execute(_statement(bucket), params).scalar_one())


@functools.cache
def _statement(bucket: str) -> TextClause:
    """Built once per duration bucket: the counters are literals of the statement."""
    open_states = ", ".join(f"'{state}'" for state in OPEN)
    counts = {name: "0" for name in COUNTERS}
    counts.update(done="n", duration_count="n", duration_sum_ms="n * :ms")
    counts[bucket] = "n"
    columns = ", ".join(COUNTERS)
    values = ", ".join(counts[name] for name in COUNTERS)
    sums = ", ".join(f"{name} = ihub_rollups.{name} + excluded.{name}" for name in COUNTERS)
    return text(
        f"""
        WITH done AS (
            UPDATE ihub_records SET status = '{RecordStatus.DONE}', finished_at = :now,
                duration_ms = :ms, due_at = NULL, last_error = NULL, error_class = NULL
            WHERE id = ANY(:ids) AND status IN ({open_states})
            RETURNING integration
        ), counted AS (
            SELECT integration, count(*) AS n FROM done GROUP BY integration
        ), rolled AS (
            INSERT INTO ihub_rollups (integration, minute, shard, {columns})
            SELECT integration, :minute, :shard, {values} FROM counted
            ON CONFLICT (integration, minute, shard) DO UPDATE SET {sums}
        )
        SELECT coalesce(sum(n), 0) FROM counted
        """
    )
