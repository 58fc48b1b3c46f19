"""process_record: one staged row to its sink. The task carries the row id, nothing else."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, Task

from pipeline import sync
from pipeline.errors import TransientError, redacted_error
from pipeline.retry import backoff_seconds
from pipeline.settings import Settings
from pipeline.spool import KEY, Spool, is_database_outage
from tasks.broker import redis_client, start_broker
from tasks.context import hub, leaving

# A database outage is retried by Celery on its own budget: about 25 minutes at 30 s apart;
# past that the message is dropped and the reconciler republishes the row from the database.
DATABASE_RETRIES = 50
DATABASE_BACKOFF_MAX = 30.0


def register(app: Celery, settings: Settings) -> None:
    limit = settings.process_time_limit

    @app.task(
        name="ihub.process_record",
        shared=False,
        bind=True,
        acks_late=True,
        ignore_result=True,
        time_limit=limit,
        soft_time_limit=limit - min(30.0, limit / 10),
    )
    def process_record(self: Task, row_id: int) -> str:
        request = self.request
        delivery = sync.Delivery(
            worker=request.hostname,
            token=request.id,
            redelivered=bool((request.delivery_info or {}).get("redelivered")),
            spool=dead_letter_spool(app, settings),
        )
        try:
            outcome = sync.process_record(hub(), int(row_id), delivery=delivery)
        except Exception as exc:
            if not is_database_outage(exc):
                raise leaving(exc, f"process row {row_id}") from None
            outage = TransientError(f"database unavailable: {type(exc).__name__}")
        else:
            outage = None
        if outage is not None:  # retried outside the except block: no chained original text
            # Every state change is one transaction, so nothing is half-written: run it again
            # later under the same task id, which takes the row back without counting a crash.
            countdown = backoff_seconds(request.retries + 1, base=1.0, cap=DATABASE_BACKOFF_MAX)
            raise self.retry(countdown=countdown, max_retries=DATABASE_RETRIES, exc=outage)
        if outcome.status == "retry":
            # Celery's retry publishes a new message with our backoff as its countdown; the row
            # is already marked retrying with a deadline, so a retry whose publish fails (Celery
            # then drops the message) is republished by the reconciler.
            error = redacted_error(outcome.error) if outcome.error else None
            raise self.retry(countdown=outcome.countdown, max_retries=None, exc=error)
        return outcome.status


def publish_records(app: Celery, row_ids: list[int]) -> None:
    """One process_record per row, over one pooled producer connection."""
    start_broker(app)
    task: Any = app.tasks["ihub.process_record"]
    with app.producer_or_acquire() as producer:
        for row_id in row_ids:
            task.apply_async((row_id,), producer=producer)


_spools: dict[int, Spool] = {}


def dead_letter_spool(app: Celery, settings: Settings) -> Spool:
    """This process's spool: a list on the broker's Redis, a directory under IHUB_HOME."""
    spool = _spools.get(os.getpid())
    if spool is None:
        prefix = app.conf.broker_transport_options.get("global_keyprefix", "")
        clients: list[Any] = []

        def client() -> Any:
            if not clients:
                clients.append(redis_client(str(app.conf.broker_url)))
            return clients[0]

        spool = Spool(client, settings.home / "spool", key=f"{prefix}{KEY}")
        _spools[os.getpid()] = spool
    return spool
