"""A response as paginators read it, and the helpers that dig figures and links out of it."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from requests.utils import parse_header_links

from pipeline.delta import Watermark


@dataclass(frozen=True)
class Reply:
    """One response as a paginator sees it: parsed body, headers, the records and their keys."""

    body: Any
    headers: Mapping[str, str]
    items: list[Any]
    keys: list[Watermark | None]  # (updated, id) per item; None where it could not be read
    url: str = ""
    digest: str = ""  # of the response's bytes


def next_link(header: str | None) -> str | None:
    """The rel="next" target of an RFC 8288 ``Link`` header."""
    if not header:
        return None
    for link in parse_header_links(header):
        if "next" in str(link.get("rel", "")).split():
            return link.get("url") or None
    return None


def total_of(reply: Reply, path: str | None, header: str | None) -> int | None:
    raw = dig(reply.body, path) if path else None
    if raw is None and header:
        raw = reply.headers.get(header)
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def dig(body: Any, path: str) -> Any:
    """The value at a dotted path (``data.items``); '' is the body itself."""
    node = body
    for part in _parts(path):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


@functools.lru_cache(maxsize=256)
def _parts(path: str) -> tuple[str, ...]:
    """A dotted path's keys, split once: ``dig`` runs for several fields of every record."""
    return tuple(part for part in path.split(".") if part)
