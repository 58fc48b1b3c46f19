"""Jinja2 for the status page: autoescaped templates, so a new field is escaped by default.

Record ids, messages, payloads and reasons come from third parties; autoescape covers every one
of them. The only markup that bypasses escaping is the SVG from ``ihub.web.charts``, which builds
it from numbers and escapes its labels itself (it returns ``Markup``). ``StrictUndefined`` turns a
misspelt name into an error in the tests instead of an empty cell on the page.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from ihub.web import charts


def ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def iso(value: Any) -> str:
    return value.isoformat() + "Z" if isinstance(value, datetime) else str(value or "")


def local_time(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M") if moment else ""


def hours(value: float) -> str:
    return f"{value / 24:g} d" if value >= 48 else f"{value:g} h"


def span(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    seconds = int(seconds)
    for unit, name in ((86400, "d"), (3600, "h"), (60, "m")):
        if abs(seconds) >= unit:
            return f"{seconds // unit}{name}"
    return f"{max(seconds, 0)}s"


def short(message: str | None) -> str:
    message = message or ""
    return message if len(message) <= 120 else message[:119] + "…"


def percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f}%"


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("ihub.web", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ms=ms, iso=iso, hours=hours, span=span, short=short, percent=percent)
    env.globals.update(donut=charts.donut, bar=charts.bar)
    return env


def render(name: str, **context: Any) -> str:
    return environment().get_template(name).render(**context)
