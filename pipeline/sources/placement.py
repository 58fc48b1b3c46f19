"""Where a request's parts go: the delta's lower bound, the paginator's parameters, the body.

Pure functions, so that every placement style is tested without a server. The bound is written
in the delta's format and zone, then placed as a plain query parameter (``updated_since=...``),
or templated into a query-language parameter (``sysparm_query=sys_updated_on>={watermark}``),
or into a JSON body for search endpoints that use POST (``{watermark}``, and ``{id}`` for keyset
paging, anywhere in the body's strings; ``{until}``, the run's upper bound, for APIs that take
one). With POST, the paginator's parameters and
``delta.param`` are dotted paths into the body; static ``params`` stay in the query string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.config import DeltaConfig, SourceConfig
from pipeline.timefmt import EPOCH, format_time

WATERMARK, ID, UNTIL = "{watermark}", "{id}", "{until}"


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None


def build_request(
    config: SourceConfig,
    bound: tuple[datetime | None, str],
    page_params: dict[str, Any],
    next_url: str | None = None,
    *,
    until: datetime | None = None,
) -> Request:
    """The next request: to ``next_url`` as given, or to the source URL with everything placed."""
    values = placeholders(config, *bound, until=until)
    body = render(config.body, values) if config.method == "POST" else None
    if next_url:
        return Request(config.method, next_url, {}, body)
    params: dict[str, Any] = dict(config.params)
    placed = dict(page_params)
    if config.delta.param and values is not None:
        placed[config.delta.param] = bound_value(config.delta, values)
    for name, value in placed.items():
        if body is None:
            params[name] = value  # a query parameter's name is taken as it is, dots and all
        else:
            put(body, name, value)
    return Request(config.method, config.url, params, body)


def placeholders(
    config: SourceConfig, updated: datetime | None, record_id: str, until: datetime | None = None
) -> dict[str, str] | None:
    """``{watermark}``, ``{id}`` and ``{until}`` (default: now) for this request; None when no
    bound goes out at all.

    A first load has no bound: a plain parameter is then left out, while a template or a body
    (which cannot drop a clause) gets ``delta.start``, or the Unix epoch.
    """
    delta = config.delta
    if updated is None:
        updated = delta.start
    body = str(config.body or "")
    if updated is None and not (delta.template or WATERMARK in body or UNTIL in body):
        return None
    moment = updated if updated is not None else EPOCH
    upper = until if until is not None else datetime.now(UTC)
    return {
        WATERMARK: format_time(moment, delta.format, tz=delta.timezone),
        ID: record_id,
        UNTIL: format_time(upper, delta.format, tz=delta.timezone),
    }


def bound_value(delta: DeltaConfig, values: dict[str, str]) -> str:
    if not delta.template:
        return values[WATERMARK]
    return substitute(delta.template, values)


def substitute(text: str, values: dict[str, str]) -> str:
    """Replace only the placeholders: other braces (JSON, filter syntax) stay as they are."""
    text = text.replace(WATERMARK, values[WATERMARK]).replace(ID, values[ID])
    return text.replace(UNTIL, values[UNTIL]) if UNTIL in values else text


def render(node: Any, values: dict[str, str] | None) -> Any:
    """A copy of a JSON body with the placeholders replaced. A string that is exactly
    ``{watermark}`` in an epoch format becomes a JSON number."""
    if isinstance(node, dict):
        return {k: render(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [render(v, values) for v in node]
    if not isinstance(node, str) or values is None:
        return node
    for name in (WATERMARK, UNTIL):
        if node == name and values.get(name, "").isdigit():
            return int(values[name])
    return substitute(node, values)


def put(target: dict[str, Any], path: str, value: Any) -> None:
    """Set ``value`` at a dotted path, creating the objects on the way (query names have none)."""
    parts = path.split(".")
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value
