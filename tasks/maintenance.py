"""reconcile: republish what the broker lost (the database remembers every open row) after
writing the dead letters spooled during a database outage, and prune done rows past the
retention (IHUB_RETENTION_DAYS); redrive: a dead-letter policy."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery

from celeryconfig import PROCESS_QUEUE
from models import retention
from pipeline import sync
from pipeline.settings import Settings
from tasks.broker import redis_client
from tasks.context import hub
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
        found = sync.reconcile(hub(), publish, spool, queue_depth=process_queue_depth(app))
        # retention rides on the reconciler's minute: a bounded batch of old done rows
        retention.prune(settings.database_url, older_than=timedelta(days=settings.retention_days))
        return found

    @app.task(
        name="ihub.redrive",
        shared=False,
        acks_late=True,
        ignore_result=True,
        time_limit=limit,
        soft_time_limit=limit * 0.9,
    )
    def redrive(integration: str) -> int:
        return len(sync.redrive(hub(), integration, publish).row_ids)


def process_queue_depth(app: Celery) -> int | None:
    """Messages waiting in the process queue; None when Redis does not say."""
    prefix = app.conf.broker_transport_options.get("global_keyprefix", "")
    client: Any = None
    try:
        client = redis_client(str(app.conf.broker_url))
        return int(client.llen(f"{prefix}{PROCESS_QUEUE}"))
    except Exception:
        return None
    finally:
        if client is not None:
            client.close()
