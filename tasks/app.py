"""The Celery app factory: settings from celeryconfig, the broker, the tasks, the schedule."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_process_init

from models.db import dispose_all
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.redaction import install_redaction
from pipeline.settings import Settings, settings_from_env
from tasks import context
from tasks.broker import embedded_broker_url
from tasks.checks import check_visibility

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
    app.config_from_object("celeryconfig")
    apply_settings(app.conf, settings)
    app.conf.broker_url = settings.broker_url or embedded_broker_url(settings.home)
    app.conf.beat_schedule_filename = str(settings.home / "celerybeat-schedule")
    from tasks import fetch, maintenance, records, schedule

    records.register(app, settings)
    fetch.register(app, settings)
    maintenance.register(app, settings)
    try:
        config = load_config(settings.config_path)
    except ConfigError as exc:
        log.warning("no integrations scheduled: %s", exc)
        config = None
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
