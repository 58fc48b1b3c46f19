"""reconcile: republish what the broker lost (the database remembers every open row) after
writing the dead letters spooled during a database outage; redrive: a dead-letter policy."""

from __future__ import annotations

from celery import Celery

from celeryconfig import PROCESS_QUEUE
from pipeline import sync
from pipeline.settings import Settings
from tasks.broker import queue_depths
from tasks.context import hub, leaving
from tasks.records import dead_letter_spool, publish_records

# Both run on the fetch queue; a run republishes at most 5,000 rows, seconds of work.
TIME_LIMIT = 120.0


def register(app: Celery, settings: Settings) -> None:
    limit = min(TIME_LIMIT, settings.fetch_time_limit)

    def publish(ids: list[int]) -> None:
        publish_records(app, ids)

    @app.task(
        name="ihub.reconcile",
        shared=False,
        acks_late=True,
        ignore_result=True,
        time_limit=limit,
        soft_time_limit=limit * 0.9,
    )
    def reconcile() -> int:
        spool = dead_letter_spool(app, settings)
        try:
            return sync.reconcile(hub(), publish, spool, queue_depth=process_queue_depth(app))
        except Exception as exc:
            raise leaving(exc, "reconcile") from None

    @app.task(
        name="ihub.redrive",
        shared=False,
        acks_late=True,
        ignore_result=True,
        time_limit=limit,
        soft_time_limit=limit * 0.9,
    )
    def redrive(integration: str) -> int:
        try:
            return len(sync.redrive(hub(), integration, publish).row_ids)
        except Exception as exc:
            raise leaving(exc, f"redrive {integration}") from None


def process_queue_depth(app: Celery) -> int | None:
    """Messages waiting in the process queue; None when the broker does not say."""
    options = app.conf.broker_transport_options
    depths = queue_depths(str(app.conf.broker_url), [PROCESS_QUEUE], options)
    return None if depths is None else depths[PROCESS_QUEUE]
