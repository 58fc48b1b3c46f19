"""A page's checkpoint, in the page's own transaction: the watermark moved by compare-and-set
(PITFALLS 27), the fetch lease renewed (its heartbeat), the run's counters added to.

On Postgres the three are one statement on the session's connection. As three ORM statements
they cost a page about 1.5 ms of the fetching process's CPU and two more round trips (measured
in ``bench/README.md``): 3 us a record at pages of 500, 15 at pages of 100. Elsewhere (SQLite)
they stay three statements.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import update
from sqlalchemy.orm import Session

from models import integrations, leases, staging_pg
from models.schema import FetchRun
from models.values import Watermark, utcnow

Outcome = Literal["ok", "lost_race", "lease_lost"]


@dataclass(frozen=True)
class Checkpoint:
    """What a staged page moves: ``old`` -> ``new`` (``new`` None or equal: the watermark
    stays), the lease ``lease`` held by ``owner`` (None: no lease) for ``ttl`` seconds more,
    and ``fetched`` and ``staged`` added to run ``run_id``."""

    integration: str
    run_id: int
    fetched: int
    staged: int
    old: Watermark | None
    new: Watermark | None
    lease: str | None = None
    owner: str | None = None
    ttl: float = 0.0

    @property
    def moves(self) -> bool:
        return self.new is not None and self.new != self.old

    @property
    def leased(self) -> bool:
        return self.lease is not None and self.owner is not None


def write(session: Session, point: Checkpoint) -> Outcome:
    """Write ``point``; "lost_race" when another fetch moved the watermark first, "lease_lost"
    when another owner took the lease over. The caller rolls the page back on either."""
    if session.get_bind().dialect.name == "postgresql":
        return _write_postgres(session, point)
    if not integrations.move_watermark(session, point.integration, point.old, point.new):
        return "lost_race"
    if point.leased and not leases.hold(session, str(point.lease), str(point.owner), point.ttl):
        return "lease_lost"
    table = FetchRun.__table__
    session.execute(
        update(table)
        .where(table.c.id == point.run_id)
        .values(
            pages=table.c.pages + 1,
            fetched=table.c.fetched + point.fetched,
            staged=table.c.staged + point.staged,
        )
    )
    return "ok"


def _write_postgres(session: Session, point: Checkpoint) -> Outcome:
    """One statement: data-modifying ``WITH`` parts run once each, whatever the query reads."""
    now = utcnow()
    params: dict[str, Any] = {
        "run": point.run_id,
        "fetched": point.fetched,
        "staged": point.staged,
        "name": point.integration,
        "now": now,
    }
    parts = [
        "run AS (UPDATE ihub_fetch_runs SET pages = pages + 1, fetched = fetched + %(fetched)s,"
        " staged = staged + %(staged)s WHERE id = %(run)s)"
    ]
    moved = held = "1"
    if point.moves:
        parts.append(_compare_and_set(point, params))
        moved = "(SELECT count(*) FROM mark)"
    if point.leased:
        params.update(
            lease=point.lease, owner=point.owner, expires=now + timedelta(seconds=point.ttl)
        )
        parts.append(
            "held AS (UPDATE ihub_leases SET expires_at = %(expires)s, renewed_at = %(now)s"
            " WHERE name = %(lease)s AND owner = %(owner)s RETURNING 1)"
        )
        held = "(SELECT count(*) FROM held)"
    with contextlib.closing(staging_pg.cursor(session)) as cur:
        cur.execute(f"WITH {', '.join(parts)} SELECT {moved}, {held}", params)
        moved_rows, held_rows = cur.fetchone()
    if moved_rows != 1:
        return "lost_race"
    return "ok" if held_rows == 1 else "lease_lost"


def _compare_and_set(point: Checkpoint, params: dict[str, Any]) -> str:
    """The watermark's move, as ``integrations.move_watermark`` makes it (``updated_at`` is
    the ORM column's ``onupdate``)."""
    assert point.new is not None
    params["new_updated"], params["new_id"] = point.new.to_text()
    if point.old is None:
        expected = "watermark_updated IS NULL"
    else:
        params["old_updated"], params["old_id"] = point.old.to_text()
        expected = "watermark_updated = %(old_updated)s AND watermark_id = %(old_id)s"
    return (
        "mark AS (UPDATE ihub_integrations SET watermark_updated = %(new_updated)s,"
        " watermark_id = %(new_id)s, updated_at = %(now)s"
        f" WHERE name = %(name)s AND {expected} RETURNING 1)"
    )
