"""fetch_delta: stage what changed at the source, then fan out one task per new row."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from pipeline import sync
from pipeline.errors import TransientError
from pipeline.retry import backoff_seconds
from pipeline.settings import Settings
from tasks.context import hub
from tasks.records import publisher


def register(app: Celery, settings: Settings) -> None:
    @app.task(
        name="ihub.fetch_delta",
        shared=False,
        bind=True,
        acks_late=True,
        ignore_result=True,
        time_limit=settings.fetch_time_limit,
        soft_time_limit=settings.fetch_time_limit - 60,
    )
    def fetch_delta(self: Task, integration: str) -> dict[str, Any]:
        engine = hub()
        try:
            result = sync.fetch_delta(
                engine,
                integration,
                publisher(app, engine, integration),
                owner=self.request.id or "fetch",
            )
        except TransientError as exc:
            policy = engine.integration(integration).retry
            countdown = backoff_seconds(
                self.request.retries + 1,
                base=policy.backoff,
                cap=policy.backoff_max,
                retry_after=exc.retry_after,
            )
            raise self.retry(countdown=countdown, max_retries=policy.max_retries, exc=exc) from None
        return {"status": result.status, "run_id": result.run_id, "staged": result.staged}
