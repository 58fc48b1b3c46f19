"""Paginators are small state machines that do no I/O (after dlt's BasePaginator).

The fetch loop asks ``params()`` for the next request's query, sends it, and hands the parsed
body to ``advance()``; ``done`` says when to stop. A cursor that comes back twice is a loop
in the source, and an error rather than an endless fetch.
"""

from __future__ import annotations

from typing import Any, Protocol

from pipeline.config import PaginationConfig
from pipeline.errors import PermanentError


class Paginator(Protocol):
    done: bool

    def params(self) -> dict[str, str]: ...

    def advance(self, body: Any, records: list[Any]) -> None: ...


class SinglePage:
    def __init__(self) -> None:
        self.done = False

    def params(self) -> dict[str, str]:
        return {}

    def advance(self, body: Any, records: list[Any]) -> None:
        self.done = True


class CursorPaginator:
    """Cursor token from the response body, sent back as a query parameter."""

    def __init__(self, config: PaginationConfig) -> None:
        self.config = config
        self.cursor: str | None = None
        self.seen: set[str] = set()
        self.done = False

    def params(self) -> dict[str, str]:
        params = {self.config.limit_param: str(self.config.limit)}
        if self.cursor:
            params[self.config.cursor_param] = self.cursor
        return params

    def advance(self, body: Any, records: list[Any]) -> None:
        cursor = dig(body, self.config.cursor_path)
        if not cursor or not records:
            self.done = True
            return
        cursor = str(cursor)
        if cursor in self.seen:
            raise PermanentError(f"pagination loop: cursor {cursor[:40]!r} came back twice")
        self.seen.add(cursor)
        self.cursor = cursor


class OffsetPaginator:
    """offset/limit; stops on a short page. Unsafe while the source changes (see README)."""

    def __init__(self, config: PaginationConfig) -> None:
        self.config = config
        self.offset = 0
        self.done = False

    def params(self) -> dict[str, str]:
        return {
            self.config.limit_param: str(self.config.limit),
            self.config.offset_param: str(self.offset),
        }

    def advance(self, body: Any, records: list[Any]) -> None:
        self.offset += len(records)
        self.done = len(records) < self.config.limit


def make_paginator(config: PaginationConfig) -> Paginator:
    if config.type == "cursor":
        return CursorPaginator(config)
    if config.type == "offset":
        return OffsetPaginator(config)
    return SinglePage()


def dig(body: Any, path: str) -> Any:
    """The value at a dotted path (``data.items``); '' is the body itself."""
    node = body
    for part in [p for p in path.split(".") if p]:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node
