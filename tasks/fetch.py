"""fetch_delta: stage what changed at the source, then fan out one task per new row.

A run ends within its budget; when it says there is more to read, the next run is sent at once
(the watermark is checkpointed, so it goes on from there)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, Task

from pipeline import sync
from pipeline.errors import TransientError, redacted_error
from pipeline.retry import backoff_seconds
from pipeline.settings import Settings
from tasks.context import hub, leaving
from tasks.records import publisher


def register(app: Celery, settings: Settings) -> None:
    @app.task(
        name="ihub.fetch_delta",
        shared=False,
        bind=True,
        acks_late=True,
        ignore_result=True,
        time_limit=settings.fetch_time_limit,
        soft_time_limit=settings.fetch_time_limit - min(60.0, settings.fetch_time_limit / 10),
    )
    def fetch_delta(self: Task, integration: str) -> dict[str, Any]:
        engine = hub()
        task_id = self.request.id or "fetch"
        holder = f"{self.request.hostname or 'worker'} pid {os.getpid()} task {task_id}"
        try:
            result = sync.fetch_delta(
                engine,
                integration,
                publisher(app, engine, integration),
                owner=task_id,
                holder=holder,
            )
        except TransientError as exc:
            transient = redacted_error(exc)
        except Exception as exc:
            raise leaving(exc, f"fetch {integration}") from None
        else:
            if result.more:  # the budget ended the run: the next one goes on from its checkpoint
                self.apply_async((integration,))
            return {"status": result.status, "run_id": result.run_id, "staged": result.staged}
        # Outside the except block: Celery chains the exception being handled to the one it
        # raises when retries are spent, and that chain would carry the unredacted text.
        policy = engine.integration(integration).retry
        countdown = backoff_seconds(
            self.request.retries + 1,
            base=policy.backoff,
            cap=policy.backoff_max,
            retry_after=getattr(transient, "retry_after", None),
        )
        raise self.retry(countdown=countdown, max_retries=policy.max_retries, exc=transient)
