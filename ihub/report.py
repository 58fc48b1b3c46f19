"""The figures behind ``ihub status`` and the status page's /api/status."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from models import integrations, queue, runs
from models.db import session_scope
from models.schema import StagedRecord
from pipeline.timefmt import utcnow

QUEUES = ("ihub.fetch", "ihub.process")


def status_report(database_url: str, broker_url: str | None) -> dict[str, Any]:
    states = {s.name: s for s in integrations.all_states(database_url)}
    with session_scope(database_url) as session:
        names = set(states) | set(session.scalars(select(StagedRecord.integration).distinct()))
    items = [_integration(database_url, name, states.get(name)) for name in sorted(names)]
    return {
        "integrations": items,
        "totals": queue.counts(database_url),
        "queues": queue_depths(broker_url),
        "generated_at": utcnow().isoformat() + "Z",
    }


def _integration(database_url: str, name: str, state: Any) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat() + "Z" if value else None

    return {
        "name": name,
        "status": state.status if state else "active",
        "status_reason": state.status_reason if state else None,
        "watermark": {"updated": state.watermark_updated, "id": state.watermark_id}
        if state and state.watermark_updated
        else None,
        "last_fetch_at": iso(state.last_fetch_at) if state else None,
        "last_success_at": iso(state.last_success_at) if state else None,
        "counts": queue.counts(database_url, name),
        "last_run": runs.latest(database_url, name),
    }


def queue_depths(broker_url: str | None) -> dict[str, int] | None:
    """Messages waiting per Celery queue; None when there is no broker to ask."""
    if not broker_url:
        return None
    from tasks.broker import redis_client

    try:
        client = redis_client(broker_url)
        depths = {name: int(client.llen(name)) for name in QUEUES}
        client.close()
        return depths
    except Exception:
        return None
