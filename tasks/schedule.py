"""Beat's schedule, built from the integration definitions.

Each fetch entry expires after one interval, so ticks queued during an outage are dropped
instead of replayed (PITFALLS 28); catch-up comes from the watermark, not from the schedule.
"""

from __future__ import annotations

import os
from typing import Any

from celery.schedules import crontab

from pipeline.config import HubConfig, load_config
from pipeline.errors import ConfigError

RECONCILE_EVERY = 30.0
_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")


def cron(text: str) -> crontab:
    """A 5-field cron string (minute hour day month weekday) as Celery's own ``crontab``."""
    minute, hour, day, month, weekday = text.split()
    return crontab(minute, hour, weekday, day, month)


def cron_problem(text: str) -> str | None:
    """What Celery's parser says about ``text``, naming the field it refuses; None when valid.

    Beat runs this very parser, so ``ihub check`` and the scheduler can never disagree.
    """
    for field, value in zip(_FIELDS, text.split(), strict=True):
        try:
            crontab(**{field: value})
        except ValueError as exc:
            return f"cron {text!r}: {field.replace('_', ' ')} {value!r}: {exc}"
    try:
        cron(text)
    except ValueError as exc:
        return f"cron {text!r}: {exc}"
    return None


def load_checked_config(
    path: str | os.PathLike[str], env: dict[str, str] | None = None
) -> HubConfig:
    """The config as every process that schedules or runs it must accept it.

    ``ihub check``, ``ihub worker``, ``ihub beat`` and the Celery app factory all call this, so
    a config one of them refuses is refused by all with the same message.
    """
    config = load_config(path, env)
    problems = [
        f"{config.source_file}: integrations.{name}.schedule: {problem}"
        for name, integration in config.integrations.items()
        if isinstance(integration.schedule, str)
        and (problem := cron_problem(integration.schedule)) is not None
    ]
    if problems:
        raise ConfigError(f"{config.source_file}: invalid configuration", problems)
    return config


def build(
    config: HubConfig | None, reconcile_every: float = RECONCILE_EVERY
) -> dict[str, dict[str, Any]]:
    """The reconciler always; a fetch per enabled integration when there is a config, and a
    redrive per integration whose dead-letter redrive policy is enabled."""
    entries: dict[str, dict[str, Any]] = {
        "ihub.reconcile": {
            "task": "ihub.reconcile",
            "schedule": reconcile_every,
            "options": {"expires": reconcile_every},
        },
    }
    for name, integration in (config.integrations if config else {}).items():
        if integration.redrive.enabled:
            every = integration.redrive.every
            entries[f"ihub.redrive.{name}"] = {
                "task": "ihub.redrive",
                "schedule": every,
                "args": (name,),
                "options": {"expires": every},
            }
    for name, integration in (config.integrations if config else {}).items():
        if not integration.enabled:
            continue
        schedule = integration.schedule
        if isinstance(schedule, str):
            every: Any = cron(schedule)
            expires = 60.0
        else:
            every, expires = float(schedule), float(schedule)
        entries[f"ihub.fetch_delta.{name}"] = {
            "task": "ihub.fetch_delta",
            "schedule": every,
            "args": (name,),
            "options": {"expires": expires},
        }
    return entries
