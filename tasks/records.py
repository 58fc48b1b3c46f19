"""process_record: one staged row to its sink. The task carries the row id, nothing else."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from pipeline import sync
from pipeline.settings import Settings
from tasks.context import hub


def register(app: Celery, settings: Settings) -> None:
    @app.task(
        name="ihub.process_record",
        shared=False,
        bind=True,
        acks_late=True,
        ignore_result=True,
        time_limit=settings.process_time_limit,
        soft_time_limit=settings.process_time_limit - 30,
    )
    def process_record(self: Task, row_id: int) -> str:
        outcome = sync.process_record(hub(), int(row_id), worker=self.request.hostname)
        if outcome.status == "retry":
            # Celery's retry publishes a new message with our backoff as its countdown; the row
            # is already marked retrying with a deadline, so a lost retry is republished.
            raise self.retry(countdown=outcome.countdown, max_retries=None, exc=outcome.error)
        return outcome.status


def publish_records(app: Celery, row_ids: list[int]) -> None:
    """One process_record per row, over one pooled producer connection."""
    task: Any = app.tasks["ihub.process_record"]
    with app.producer_or_acquire() as producer:
        for row_id in row_ids:
            task.apply_async((row_id,), producer=producer)
