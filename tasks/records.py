"""process_record: one staged row to its sink. The task carries the row id, nothing else."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from celery import Celery, Task

from pipeline import batch, sync
from pipeline.errors import TransientError, redacted_error
from pipeline.hub import Hub
from pipeline.retry import backoff_seconds
from pipeline.settings import Settings
from pipeline.spool import KEY, Spool, is_database_outage
from tasks.broker import redis_client, start_broker
from tasks.context import hub, leaving
from tasks.publishing import publish_each

# A database outage is retried by Celery on its own budget: about 25 minutes at 30 s apart;
# past that the message is dropped and the reconciler republishes the row from the database.
DATABASE_RETRIES = 50
DATABASE_BACKOFF_MAX = 30.0


def register(app: Celery, settings: Settings) -> None:
    limit = settings.process_time_limit

    options: dict[str, Any] = {
        "shared": False,
        "bind": True,
        "acks_late": True,
        "ignore_result": True,
        "time_limit": limit,
        "soft_time_limit": limit - min(30.0, limit / 10),
    }

    @app.task(name="ihub.process_record", **options)
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

    @app.task(name="ihub.process_batch", **options)
    def process_batch(self: Task, row_ids: list[int]) -> dict[str, int]:
        request = self.request
        delivery = sync.Delivery(
            worker=request.hostname,
            token=request.id,
            redelivered=bool((request.delivery_info or {}).get("redelivered")),
            spool=dead_letter_spool(app, settings),
        )
        try:
            result = batch.process_batch(hub(), [int(i) for i in row_ids], delivery=delivery)
        except Exception as exc:
            if not is_database_outage(exc):
                raise
            countdown = backoff_seconds(request.retries + 1, base=1.0, cap=DATABASE_BACKOFF_MAX)
            error = TransientError(f"database unavailable: {type(exc).__name__}")
            raise self.retry(countdown=countdown, max_retries=DATABASE_RETRIES, exc=error) from None
        # a row that failed on its own retries as a single record (its row is marked retrying
        # with a deadline: a publish that fails here is the reconciler's)
        task: Any = app.tasks["ihub.process_record"]
        for row_id, outcome in result.single:
            if outcome.status == "retry":
                task.apply_async((row_id,), countdown=outcome.countdown)
        return {s: result.count(s) for s in ("done", "retry", "dead")}


def publisher(app: Celery, hub: Hub, name: str) -> Callable[[list[int]], None]:
    """How a fetch of ``name`` publishes its staged rows: one task per row, or per chunk of
    ``batch_size`` rows in batched mode."""

    def publish(row_ids: list[int]) -> None:
        config = hub.integration(name)  # read when there is something to publish
        if config.mode == "batched":
            publish_batches(app, row_ids, config.batch_size)
        else:
            publish_records(app, row_ids)

    return publish


def publish_batches(app: Celery, row_ids: list[int], size: int) -> None:
    """One process_batch per ``size`` rows (tasks.publishing: pipelined, events batched)."""
    start_broker(app)
    chunks = ((row_ids[start : start + size],) for start in range(0, len(row_ids), size))
    publish_each(app, "ihub.process_batch", chunks, describe_chunk)


def describe_chunk(args: tuple[Any, ...]) -> str:
    """A chunk's arguments as Flower shows them: how many rows, the first and the last. Celery's
    ``saferepr`` of 500 ids cost half of a publish's CPU and showed a list cut at 1,024
    characters."""
    (row_ids,) = args
    if not row_ids:
        return "([],)"
    return f"([{row_ids[0]}, ... {row_ids[-1]}: {len(row_ids)} rows],)"


def publish_records(app: Celery, row_ids: list[int]) -> None:
    """One process_record per row (tasks.publishing: pipelined, events batched)."""
    start_broker(app)
    publish_each(app, "ihub.process_record", ((row_id,) for row_id in row_ids), describe_record)


def describe_record(args: tuple[Any, ...]) -> str:
    """A record task's arguments, ``(row id,)``, as Celery's ``saferepr`` writes them, which
    cost a tenth of a publish's CPU."""
    return f"({args[0]!r},)"


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
