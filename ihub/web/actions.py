"""Operator actions shared by the CLI and the status page: one implementation each.

Requeue moves dead rows back to pending (``models.queue.requeue_dead``, guarded by the dead
state, so a row already requeued by someone else is skipped) and then publishes one
``process_record`` per row. A failed publish loses nothing: the rows are pending with a
deadline, and the reconciler republishes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from models import dashboard, queue
from models.dashboard import DeadFilter

log = logging.getLogger(__name__)
Publish = Callable[[list[int]], None]
CHUNK = 500


@dataclass(frozen=True)
class Requeued:
    row_ids: list[int]
    dry_run: bool
    published: bool = True

    def as_dict(self) -> dict[str, object]:
        return {
            "requeued": 0 if self.dry_run else len(self.row_ids),
            "would_requeue": len(self.row_ids) if self.dry_run else 0,
            "row_ids": self.row_ids,
            "published": self.published and not self.dry_run,
        }


def publish_with_celery(row_ids: list[int]) -> None:
    from tasks.app import get_app
    from tasks.records import publish_records

    publish_records(get_app(), row_ids)


def requeue(
    database_url: str,
    *,
    row_ids: list[int] | None = None,
    flt: DeadFilter | None = None,
    everything: bool = False,
    dry_run: bool = False,
    due_in: float = 300.0,
    publish: Publish | None = None,
) -> Requeued:
    """Requeue the given rows, or every dead letter the filter matches, or all of them.

    Row ids and a filter together: the rows among them that the filter matches.
    """
    flt = flt or DeadFilter()
    if not (row_ids or everything or flt.integration or flt.narrower_than_integration):
        raise ValueError("name row ids, a filter, or everything")
    if flt.narrower_than_integration:
        matching = dashboard.dead_ids(database_url, flt)
        row_ids = sorted(set(matching) & set(row_ids)) if row_ids else matching
        if not row_ids:
            return Requeued([], dry_run)
    moved: list[int] = []
    chunks = [row_ids[i : i + CHUNK] for i in range(0, len(row_ids), CHUNK)] if row_ids else [None]
    for chunk in chunks:
        moved += queue.requeue_dead(
            database_url,
            integration=flt.integration,
            row_ids=chunk,
            everything=everything or chunk is not None,
            dry_run=dry_run,
            due_in=due_in,
        )
    if dry_run or not moved:
        return Requeued(moved, dry_run)
    send = publish or publish_with_celery
    try:
        for start in range(0, len(moved), CHUNK):
            send(moved[start : start + CHUNK])
    except Exception as exc:  # the broker is down: the rows are pending with a deadline
        log.warning(
            "requeued %d rows but could not publish them (%s); the reconciler will",
            len(moved),
            type(exc).__name__,
        )
        return Requeued(moved, dry_run, published=False)
    return Requeued(moved, dry_run)
