"""reconcile: republish what the broker lost (the database remembers every open row)."""

from __future__ import annotations

from celery import Celery

from pipeline import sync
from pipeline.settings import Settings
from tasks.context import hub
from tasks.records import publish_records


def register(app: Celery, settings: Settings) -> None:
    @app.task(
        name="ihub.reconcile",
        shared=False,
        acks_late=True,
        ignore_result=True,
        time_limit=600,
        soft_time_limit=540,
    )
    def reconcile() -> int:
        return sync.reconcile(hub(), lambda ids: publish_records(app, ids))
