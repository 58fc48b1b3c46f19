"""reconcile: republish what the broker lost (the database remembers every open row) after
writing the dead letters spooled during a database outage, and prune done rows past the
retention (IHUB_RETENTION_DAYS); redrive: a dead-letter policy.

A marker key in the broker's Redis, mirrored in the database, tells that the broker lost its
state (flushed, restarted without persistence): the reconciler then republishes every open row
at once instead of waiting for their deadlines.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from celery import Celery

from celeryconfig import PROCESS_QUEUE
from models import leases, retention
from pipeline import sync
from pipeline.settings import Settings
from tasks.broker import queue_depths, redis_client
from tasks.context import hub, leaving
from tasks.records import dead_letter_spool, publish_records

# Both run on the fetch queue; a run republishes at most 5,000 rows, seconds of work.
TIME_LIMIT = 120.0
MARKER = "ihub:broker-marker"


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
        engine = hub()
        lost = broker_lost(app, engine.database_url)
        depth = process_queue_depth(app)
        try:
            found = sync.reconcile(engine, publish, spool, queue_depth=depth, broker_lost=lost)
            # retention rides on the reconciler's minute: a bounded batch of old done rows
            retention.prune(
                settings.database_url, older_than=timedelta(days=settings.retention_days)
            )
        except Exception as exc:
            raise leaving(exc, "reconcile") from None
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
        try:
            return len(sync.redrive(hub(), integration, publish).row_ids)
        except Exception as exc:
            raise leaving(exc, f"redrive {integration}") from None


def process_queue_depth(app: Celery) -> int | None:
    """Messages waiting in the process queue; None when the broker does not say."""
    options = app.conf.broker_transport_options
    depths = queue_depths(str(app.conf.broker_url), [PROCESS_QUEUE], options)
    return None if depths is None else depths[PROCESS_QUEUE]


def broker_lost(app: Celery, database_url: str) -> bool:
    """Whether the broker's marker vanished since the last look (then a new one is set).

    The first look ever finds no marker in the database either: that is a start, not a loss.
    Redis that does not answer says nothing (False): publishing fails then, not the marker.
    """
    key = app.conf.broker_transport_options.get("global_keyprefix", "") + MARKER
    client: Any = None
    try:
        client = redis_client(str(app.conf.broker_url))
        seen = client.get(key)
        if seen is None:
            client.set(key, secrets.token_hex(8), nx=True)
            seen = client.get(key)
    except Exception:
        return False
    finally:
        if client is not None:
            client.close()
    marker = seen.decode() if isinstance(seen, bytes) else str(seen)
    previous = leases.remember(database_url, MARKER, marker)
    return previous is not None and previous != marker
