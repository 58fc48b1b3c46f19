"""The figures behind ``ihub status --json``, the status page and /api/status: one source."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import select

from models import integrations, queue, runs
from models.db import session_scope
from models.schema import IntegrationState, IntegrationStatus, StagedRecord
from pipeline.timefmt import utcnow
from tasks.broker import redis_client

QUEUES = ("ihub.fetch", "ihub.process")


def collect_status(database_url: str, broker_url: str | None) -> dict[str, Any]:
    """Names come from the state table and the queue: a new integration has rows before state."""
    states = {state.name: state for state in integrations.all_states(database_url)}
    names = sorted(set(states) | _queued_names(database_url))
    return {
        "integrations": [_integration(database_url, n, states.get(n)) for n in names],
        "totals": queue.counts(database_url),
        "queues": queue_depths(broker_url),
        "generated_at": _iso(utcnow()),
    }


def _queued_names(database_url: str) -> set[str]:
    with session_scope(database_url) as session:
        return set(session.scalars(select(StagedRecord.integration).distinct()))


def _integration(database_url: str, name: str, state: IntegrationState | None) -> dict[str, Any]:
    state = state or IntegrationState(name=name, status=IntegrationStatus.ACTIVE)
    return {
        "name": name,
        "status": str(state.status),
        "status_reason": state.status_reason,
        "watermark": {"updated": state.watermark_updated, "id": state.watermark_id},
        "last_fetch_at": _iso(state.last_fetch_at),
        "last_success_at": _iso(state.last_success_at),
        "counts": queue.counts(database_url, name),
        "last_run": runs.latest(database_url, name),
    }


def queue_depths(broker_url: str | None) -> dict[str, int] | None:
    """LLEN of each Celery queue; None when there is no broker or it does not answer.

    No retries: redis-py's default backoff would hold the page for seconds on a dead broker.
    """
    if not broker_url:
        return None
    client: redis.Redis | None = None
    try:
        client = redis_client(broker_url)
        client.set_retry(Retry(NoBackoff(), 0))
        return {name: int(client.llen(name)) for name in QUEUES}
    except (redis.RedisError, OSError, ValueError):
        return None
    finally:
        if client is not None:
            client.close()


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() + "Z" if moment else None
