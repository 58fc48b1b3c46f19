"""The figures behind ``ihub status --json``, the status page, its /api endpoints and the demo.

One function per widget, and ``collect_status`` with all of them: the CLI and the page can never
disagree. Every time is UTC; "today" starts at UTC midnight of ``now``, which each function takes
so that a test (or one page render) decides it once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from models import dashboard, deadletters, idmap, integrations, leases, queue, runs
from models.redaction import MASK, SECRET_NAME, redact
from models.schema import IntegrationState, IntegrationStatus
from pipeline.timefmt import from_version_string, utcnow
from tasks import broker

QUEUES = ("ihub.fetch", "ihub.process")
DEFAULT_HOURS = 24
THROUGHPUT_HOURS = 3
SECRET_KEYS = SECRET_NAME


def collect_status(
    database_url: str,
    broker_url: str | None,
    *,
    now: datetime | None = None,
    hours: float = DEFAULT_HOURS,
) -> dict[str, Any]:
    """Everything the page shows, as plain JSON-able data (``ihub status --json``)."""
    now = now or utcnow()
    overview = integrations_overview(database_url, now)
    totals = {s: sum(i["counts"][s] for i in overview) for s in queue.S}
    return {
        "generated_at": iso(now),
        "integrations": overview,
        "totals": totals,
        "queues": queue_depths(broker_url),
        "success_rate": success_rate(database_url, now, hours),
        "processing_time": processing_time(database_url, now, hours),
        "errors_today": errors_today(database_url, now),
        "throughput": throughput(database_url, now, THROUGHPUT_HOURS),
        "dead_letter_actions": deadletters.actions(database_url, limit=10),
    }


def midnight(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def integrations_overview(database_url: str, now: datetime) -> list[dict[str, Any]]:
    """Names come from the state table and the queue: a new integration has rows before state."""
    states = {state.name: state for state in integrations.all_states(database_url)}
    counts = dashboard.status_counts(database_url)
    tokens: dict[str, list[dict[str, Any]]] = {}
    for token in dashboard.tokens(database_url):
        tokens.setdefault(token["integration"], []).append(_token(token, now))
    empty = {s.value: 0 for s in queue.S}
    return [
        _integration(database_url, name, states.get(name), counts.get(name, empty), now)
        | {"tokens": tokens.get(name, [])}
        for name in sorted(set(states) | set(counts))
    ]


def _integration(
    database_url: str,
    name: str,
    state: IntegrationState | None,
    counts: dict[str, int],
    now: datetime,
) -> dict[str, Any]:
    state = state or IntegrationState(name=name, status=IntegrationStatus.ACTIVE)
    lag = None
    if state.watermark_updated:
        try:
            mark = from_version_string(state.watermark_updated).replace(tzinfo=None)
            lag = round((now - mark).total_seconds(), 3)
        except ValueError:
            lag = None
    return {
        "name": name,
        "state": _state(state),
        "status": str(state.status),
        "status_reason": redact(state.status_reason) if state.status_reason else None,
        "watermark": {"updated": state.watermark_updated, "id": state.watermark_id},
        "watermark_lag_seconds": lag,
        "last_fetch_at": iso(state.last_fetch_at),
        "last_success_at": iso(state.last_success_at),
        "last_success_age_seconds": _age(now, state.last_success_at),
        "last_run": runs.latest(database_url, name),
        "fetch_holder": fetch_holder(database_url, name),
        "counts": counts,
    }


def fetch_holder(database_url: str, name: str) -> dict[str, Any] | None:
    """Who runs the integration's fetch now (worker and pid, task id) and since when."""
    found = leases.current(database_url, f"fetch:{name}")
    if found is None:
        return None
    return {
        "holder": found.holder,
        "task_id": found.owner,
        "since": iso(found.since),
        "renewed_at": iso(found.renewed_at),
        "expires_at": iso(found.expires_at),
    }


def _state(state: IntegrationState) -> str:
    """paused (waits for ``ihub auth set``), failing (the last fetch failed), or running."""
    if state.status == IntegrationStatus.REAUTH_REQUIRED:
        return "paused"
    fetched, succeeded = state.last_fetch_at, state.last_success_at
    if fetched is not None and (succeeded is None or fetched > succeeded):
        return "failing"
    return "running"


def _token(token: dict[str, Any], now: datetime) -> dict[str, Any]:
    expires = token["expires_at"]
    now_epoch = now.replace(tzinfo=UTC).timestamp()
    return {
        "credential": token["credential"],
        "expires_at": iso(datetime.fromtimestamp(expires, UTC).replace(tzinfo=None))
        if expires
        else None,
        "expires_in_seconds": round(expires - now_epoch, 3) if expires else None,
        "refreshed_at": iso(token["refreshed_at"]),
        "refresh_count": token["refresh_count"],
        "failure_count": token["failure_count"],
        "last_error": redact(token["last_error"]) if token["last_error"] else None,
    }


def windows(now: datetime, hours: float) -> dict[str, tuple[datetime, datetime]]:
    """ "today" (since UTC midnight) and "window" (the last ``hours``), both up to ``now``."""
    return {"today": (midnight(now), now), "window": (now - timedelta(hours=hours), now)}


def success_rate(database_url: str, now: datetime, hours: float) -> dict[str, Any]:
    """Done vs dead, today and over the last ``hours``."""
    spans = windows(now, hours)
    found = dashboard.outcomes(database_url, spans)
    return {
        "today": _rate(found["today"], spans["today"][0]),
        "window": _rate(found["window"], spans["window"][0]) | {"hours": hours},
    }


def _rate(outcomes: dict[str, int], since: datetime) -> dict[str, Any]:
    finished = outcomes["done"] + outcomes["dead"]
    rate = round(outcomes["done"] / finished, 6) if finished else None
    return {"since": iso(since), **outcomes, "rate": rate}


def processing_time(database_url: str, now: datetime, hours: float) -> dict[str, Any]:
    """Mean and p95 of the processing time of done records, today and over the window."""
    spans = windows(now, hours)
    found = dashboard.processing_time(database_url, spans)
    return {
        "today": {"since": iso(spans["today"][0]), **found["today"]},
        "window": {"since": iso(spans["window"][0]), "hours": hours, **found["window"]},
    }


def errors_today(
    database_url: str, now: datetime, *, integration: str | None = None, limit: int = 100
) -> dict[str, Any]:
    found = dashboard.errors(database_url, midnight(now), now, integration=integration, limit=limit)
    items = [
        {**e, "at": iso(e["at"]), "message": redact(e["message"] or "")} for e in found["items"]
    ]
    return {"since": iso(midnight(now)), "total": found["total"], "items": items}


def throughput(database_url: str, now: datetime, hours: float) -> dict[str, Any]:
    """Records finished per minute over the last ``hours``, every minute present (zeros too)."""
    end = now.replace(second=0, microsecond=0)
    start = end - timedelta(hours=hours)
    found = dashboard.throughput(database_url, start, now)
    minutes = int(hours * 60) + 1
    series = []
    for n in range(minutes):
        minute = start + timedelta(minutes=n)
        counts = found.get(minute, {"done": 0, "dead": 0})
        series.append({"minute": iso(minute), "done": counts["done"], "dead": counts["dead"]})
    return {"hours": hours, "since": iso(start), "per_minute": series}


def dead_letter(database_url: str, row_id: int) -> dict[str, Any] | None:
    """One dead letter for people: payload keys that look secret and known secrets masked."""
    dead = queue.show_dead(database_url, row_id)
    if dead is None:
        return None
    dead["payload"] = mask_payload(dead["payload"])
    # where the record is on the target's side (REST targets that assign their own ids)
    dead["id_map"] = idmap.show(database_url, dead["integration"], dead["record_id"])
    for key in ("message", "traceback"):
        if dead.get(key):
            dead[key] = redact(dead[key])
    return dead


def register_config_secrets(config_path: str) -> int:
    """Teach ``redact`` the secrets of the integration config (client secrets, passwords,
    refresh tokens, secret-looking or ``${VAR}`` headers and parameters, URL passwords), so
    that a message or traceback that quotes one is masked; the workers' ``Hub`` registers them
    the same way. Returns how many."""
    from models.redaction import register_secret
    from pipeline.config import load_config, secrets_of
    from pipeline.errors import ConfigError

    try:
        config = load_config(config_path)
    except (ConfigError, OSError):
        return 0
    found = secrets_of(config)
    for secret in found:
        register_secret(secret)
    return len(found)


def mask_payload(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: MASK if SECRET_KEYS.search(str(k)) and v not in (None, "") else mask_payload(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_payload(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value


def queue_depths(broker_url: str | None) -> dict[str, int] | None:
    """Messages waiting in each Celery queue; None when there is no broker or it is down."""
    return broker.queue_depths(broker_url, QUEUES) if broker_url else None


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() + "Z" if moment else None


def _age(now: datetime, moment: datetime | None) -> float | None:
    return round((now - moment).total_seconds(), 3) if moment else None


def render_text(status: dict[str, Any]) -> list[str]:
    """``ihub status`` without --json: the same figures, one line per thing."""
    lines = []
    for item in status["integrations"]:
        counts = " ".join(f"{k}={v}" for k, v in item["counts"].items())
        lag = item["watermark_lag_seconds"]
        parts = [
            f"{item['name']}: {item['state']}",
            f"last success {item['last_success_at'] or 'never'}",
            f"watermark {item['watermark']['updated'] or 'none'}"
            + (f" (lag {lag:.0f}s)" if lag is not None else ""),
            *(
                f"token {t['credential']} expires {t['expires_at'] or 'n/a'} "
                f"(refreshes {t['refresh_count']}, failures {t['failure_count']})"
                for t in item["tokens"]
            ),
            counts,
        ]
        lines.append(" | ".join(parts))
        holder = item.get("fetch_holder")
        if holder:
            lines.append(
                f"  fetching since {holder['since']} by {holder['holder'] or 'unknown'} "
                f"(task {holder['task_id']}, lease until {holder['expires_at']})"
            )
        if item["status_reason"]:
            lines.append(f"  reason: {item['status_reason']}")
    rate, times = status["success_rate"], status["processing_time"]
    for key, label in (("today", "today (UTC)"), ("window", f"last {rate['window']['hours']:g} h")):
        r, t = rate[key], times[key]
        success = "n/a" if r["rate"] is None else f"{100 * r['rate']:.1f}%"
        lines.append(
            f"{label}: done={r['done']} dead={r['dead']} success={success} "
            f"avg_ms={t['avg_ms']} p95_ms={t['p95_ms']}"
        )
    lines.append(f"errors today: {status['errors_today']['total']}")
    per_minute = status["throughput"]["per_minute"]
    lines.append(
        f"finished in the last {status['throughput']['hours']:g} h: "
        f"done={sum(p['done'] for p in per_minute)} dead={sum(p['dead'] for p in per_minute)}"
    )
    queues = status["queues"]
    lines.append(
        "queues: "
        + (" ".join(f"{k}={v}" for k, v in queues.items()) if queues is not None else "unavailable")
    )
    return lines
