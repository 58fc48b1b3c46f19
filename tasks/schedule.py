"""Beat's schedule, built from the integration definitions.

Each fetch entry expires after one interval, so ticks queued during an outage are dropped
instead of replayed (PITFALLS 28); catch-up comes from the watermark, not from the schedule.
"""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from pipeline.config import HubConfig

RECONCILE_EVERY = 30.0


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
            minute, hour, day, month, weekday = schedule.split()
            every: Any = crontab(minute, hour, weekday, day, month)
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
