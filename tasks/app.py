"""The Celery app factory: settings from celeryconfig, the broker, the tasks, the schedule."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    beat_init,
    worker_init,
    worker_process_init,
)

from models.db import dispose_all
from models.redaction import install_redaction
from pipeline.config import HubConfig
from pipeline.settings import Settings, settings_from_env
from tasks import context
from tasks.broker import embedded_broker_url, start_broker
from tasks.checks import check_visibility
from tasks.conf import load_celeryconfig
from tasks.schedule import load_checked_config

log = logging.getLogger(__name__)
_app: Celery | None = None


def get_app() -> Celery:
    global _app
    if _app is None:
        _app = create_app()
    return _app


def create_app() -> Celery:
    settings = settings_from_env()
    app = Celery("ihub")
    load_celeryconfig(app)
    apply_settings(app.conf, settings)
    app.conf.broker_url = settings.broker_url or embedded_broker_url(settings.home)
    app.conf.ihub_embedded_home = None if settings.broker_url else str(settings.home)
    app.conf.beat_schedule_filename = str(settings.home / "celerybeat-schedule")
    from tasks import fetch, maintenance, records, schedule

    records.register(app, settings)
    fetch.register(app, settings)
    maintenance.register(app, settings)
    config = checked_config(settings.config_path)
    # a row counts as lost after reconcile_after: look at least twice within that time
    every = min(schedule.RECONCILE_EVERY, settings.reconcile_after / 2)
    app.conf.beat_schedule = schedule.build(config, reconcile_every=every)
    limits = {
        name: float(task.time_limit or 0)
        for name, task in app.tasks.items()
        if name.startswith("ihub.")
    }
    check_visibility(app.conf, config, limits)
    return app


def checked_config(path: str) -> HubConfig | None:
    """The checked config; a missing file only leaves the reconciler scheduled.

    An invalid file raises (the same ConfigError ``ihub check`` prints): a worker or beat that
    ran on without its integrations would look healthy while syncing nothing.
    """
    if not Path(path).exists():
        log.warning("no integrations scheduled: %s does not exist", path)
        return None
    return load_checked_config(path)


@worker_init.connect
@beat_init.connect
def _ready_to_serve(sender: Any, **_: Any) -> None:
    """A worker or beat on a database without the current schema stops with the fix, instead
    of failing every task with ``no such table`` (``ihub worker`` checks before exec too).

    A database that cannot be reached is not a reason to stop: the worker rides out outages.
    """
    from models.migrate import schema_problem

    start_broker(sender.app)
    try:
        problem = schema_problem(settings_from_env().database_url)
    except Exception as exc:  # unreachable now: the tasks retry until it is back
        log.warning("schema not checked, the database did not answer: %s", type(exc).__name__)
        return
    if problem:
        raise SystemExit(f"error: {problem}")  # Celery's signal dispatch swallows Exception


def apply_settings(conf: Any, settings: Settings) -> None:
    """The environment's word on the broker: its key prefix, and one visibility timeout in all
    three places Celery and kombu read it (PITFALLS 3)."""
    timeout = settings.visibility_timeout
    conf.broker_transport_options = {
        **conf.broker_transport_options,
        "visibility_timeout": timeout,
        "global_keyprefix": settings.broker_prefix,
    }
    conf.result_backend_transport_options = {"visibility_timeout": timeout}
    conf.visibility_timeout = timeout


@worker_process_init.connect
def _fresh_process(**_: Any) -> None:
    """Pool children must not share the parent's database connections (PITFALLS 30)."""
    dispose_all()
    context.reset()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redact_logs(logger: logging.Logger, **_: Any) -> None:
    install_redaction(logger)
