"""The status page's overview: plain server-rendered HTML from Jinja2 templates, no script at all.

Escaping is the templates' default (``ihub.web.render``). Figures carry ``data-figure`` names so
that a test (or a person with the inspector) can find them. Times are UTC, and ages are taken
against the status's own ``generated_at``, so one render is consistent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ihub.web import charts
from ihub.web.render import hours as _hours
from ihub.web.render import iso, local_time, ms, render, short

__all__ = ["dashboard", "iso", "local_time", "ms", "page_context", "short"]
WINDOWS = (1, 6, 24, 168)
REFRESH_SECONDS = 10
STATUSES = ("pending", "processing", "retrying", "done", "dead")
STATE_LABELS = {
    "running": "running",
    "paused": "paused: re-authorisation required",
    "failing": "failing",
}


def page_context(title: str, *, flower_url: str | None, note: str = "") -> dict[str, Any]:
    """What ``base.html`` needs: the title, the navigation (Flower only as an http(s) link)."""
    nav = [("/", "Overview"), ("/dead", "Dead letters"), ("/api", "API"), ("/metrics", "Metrics")]
    if _is_http(flower_url):
        nav.append((str(flower_url), "Flower"))
    return {"title": title, "nav": nav, "note": note, "refresh": None}


def dashboard(status: dict[str, Any], *, flower_url: str | None, hours: float) -> str:
    now = _parse(status["generated_at"])
    rate, depths = status["success_rate"], status["queues"]
    context = page_context(
        "ihub status", flower_url=flower_url, note=f"generated {status['generated_at']} (UTC)"
    )
    context["refresh"] = REFRESH_SECONDS
    return render(
        "dashboard.html",
        **context,
        integrations=status["integrations"],
        statuses=STATUSES,
        state_labels=STATE_LABELS,
        age=lambda iso_z: (now - _parse(iso_z)).total_seconds(),
        donuts=[
            ("today", rate["today"], "Today (UTC)"),
            ("window", rate["window"], f"Last {_hours(hours)}"),
        ],
        windows=WINDOWS,
        hours=hours,
        processing=status["processing_time"],
        queues=depths,
        queue_peak=max([1, *depths.values()]) if depths else 1,
        throughput=_throughput(status["throughput"]),
        errors=status["errors_today"],
        actions=status.get("dead_letter_actions") or [],
    )


def _throughput(data: dict[str, Any]) -> dict[str, Any]:
    points = data["per_minute"]
    done = [int(p["done"]) for p in points]
    dead = [int(p["dead"]) for p in points]
    chart = charts.line_chart(
        [p["minute"][11:16] for p in points],
        [("done", charts.DONE, done), ("dead", charts.DEAD, dead)],
        title=f"Records per minute, last {_hours(data['hours'])}",
    )
    return {"hours": data["hours"], "chart": chart, "done": sum(done), "dead": sum(dead)}


def _parse(iso_z: str) -> datetime:
    return datetime.fromisoformat(iso_z.removesuffix("Z"))


def _is_http(url: str | None) -> bool:
    """Only http(s) links: a ``javascript:`` URL in configuration must not become a link."""
    return bool(url) and str(url).lower().startswith(("http://", "https://"))
