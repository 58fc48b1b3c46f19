"""The JSON endpoints behind every widget of the status page, and the request plumbing they share.

Each endpoint is one ``ihub.report`` (or ``models.dashboard``) call, the same function the page
and ``ihub status --json`` use. Times are UTC in ISO 8601 with a ``Z``; query times without an
offset are read as UTC.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ihub import report
from models import dashboard
from models.dashboard import DeadFilter

HTML, JSON, TEXT = "text/html; charset=utf-8", "application/json", "text/plain; charset=utf-8"
DEAD_PAGE = 50
MAX_HOURS = 24 * 31
ENDPOINTS = {
    "/api": "this list",
    "/api/status": "everything below in one document; the same as `ihub status --json`",
    "/api/integrations": "per integration: state (running, paused, failing), last successful "
    "fetch and its age, watermark and its lag, tokens (expiry, refreshes, failures), records "
    "by status",
    "/api/success-rate?hours=24": "done vs dead finished today (since 00:00 UTC) and in the "
    "last `hours`",
    "/api/processing-time?hours=24": "count, mean and p95 (nearest rank) of duration_ms of "
    "the records done today and in the last `hours`",
    "/api/throughput?hours=3": "records finished per minute (done, dead), every minute of the "
    "last `hours` (at most 24)",
    "/api/errors?integration=&limit=100": "errors today: dead and retrying records whose failure "
    "happened since 00:00 UTC, newest first, and their total",
    "/api/queues": "messages waiting per Celery queue (null when the broker does not answer)",
    "/api/dead?integration=&error_class=&since=&until=&limit=50&offset=0": "active dead letters "
    "matching the filter, newest failure first, and how many match in all",
    "/api/dead/<row id>": "one dead letter: payload (secrets masked), error, traceback, attempts",
    "/metrics": "Prometheus text format (not JSON)",
}


class BadRequest(ValueError):
    pass


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    form: dict[str, list[str]]
    headers: dict[str, str]
    cookie: str | None

    def arg(self, name: str, default: str = "", *, form: bool = False) -> str:
        values = (self.form if form else self.query).get(name)
        return values[0].strip() if values else default


@dataclass
class Response:
    status: str
    content_type: str
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


NOT_FOUND = Response("404 Not Found", TEXT, b"not found")


def handle(request: Request, database_url: str, broker_url: str | None, now: datetime) -> Response:
    db, path = database_url, request.path
    if path == "/api":
        return json_response({"endpoints": ENDPOINTS, "times": "UTC, ISO 8601 with Z"})
    if path == "/api/status":
        hours = number(request, "hours", 24, MAX_HOURS)
        return json_response(report.collect_status(db, broker_url, now=now, hours=hours))
    if path == "/api/integrations":
        return json_response(report.integrations_overview(db, now))
    if path == "/api/success-rate":
        return json_response(report.success_rate(db, now, number(request, "hours", 24, MAX_HOURS)))
    if path == "/api/processing-time":
        hours = number(request, "hours", 24, MAX_HOURS)
        return json_response(report.processing_time(db, now, hours))
    if path == "/api/throughput":
        return json_response(report.throughput(db, now, number(request, "hours", 3, 24)))
    if path == "/api/errors":
        integration = request.arg("integration") or None
        limit = int(number(request, "limit", 100, 1000, integer=True))
        return json_response(report.errors_today(db, now, integration=integration, limit=limit))
    if path == "/api/queues":
        return json_response(report.queue_depths(broker_url))
    if path == "/api/dead":
        limit = int(number(request, "limit", DEAD_PAGE, 1000, integer=True))
        offset = int(number(request, "offset", 0, 10**9, integer=True, low=0))
        return json_response(
            dashboard.dead_letters(db, dead_filter(request), limit=limit, offset=offset)
        )
    tail = path.removeprefix("/api/dead/")
    if tail != path and tail.isascii() and tail.isdigit():
        dead = report.dead_letter(db, int(tail))
        if dead is not None:
            return json_response(dead)
    return NOT_FOUND


def dead_filter(request: Request, *, form: bool = False) -> DeadFilter:
    return DeadFilter(
        integration=request.arg("integration", form=form) or None,
        error_class=request.arg("error_class", form=form) or None,
        since=parse_utc(request.arg("since", form=form), "since"),
        until=parse_utc(request.arg("until", form=form), "until"),
    )


def parse_utc(text: str, name: str) -> datetime | None:
    """``2024-05-11``, ``2024-05-11T08:30`` (UTC) or any ISO 8601 with an offset; naive UTC."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{name}: expected an ISO 8601 date or time, got {text!r}") from None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def number(
    request: Request,
    name: str,
    default: float,
    high: float,
    *,
    integer: bool = False,
    low: float | None = None,
) -> float:
    """A query parameter in [low, high]; hours must be above zero, counts at least one."""
    raw = request.arg(name)
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number, got {raw!r}") from None
    floor = (1 if integer else 0) if low is None else low
    if not floor <= value <= high or (value == 0 and low is None):
        raise BadRequest(f"{name} must be above {floor:g} and at most {high:g}")
    return value


def html_response(text: str) -> Response:
    return Response("200 OK", HTML, text.encode())


def json_response(value: Any) -> Response:
    return Response("200 OK", JSON, json.dumps(value, default=_default, indent=1).encode())


def _default(value: Any) -> Any:
    return report.iso(value) if isinstance(value, datetime) else str(value)
