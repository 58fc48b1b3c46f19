"""Paginators are small state machines that do no I/O (after dlt's BasePaginator).

The fetch loop (``RestSource.pages``) asks a paginator what the next request carries:
``params()``, a ``next_url()`` to follow, and the lower ``bound()`` of the delta (which only
keyset paging moves); it sends the request and hands the reply to ``advance()``. ``done`` says
when to stop. Two more flags say what the fetch loop may conclude:

* ``checkpoint``: every record up to the last one seen has been read, so on a listing ordered by
  updated the watermark may move to it now;
* ``trusted``: nothing suggests that this pass skipped a record. A pass that ends untrusted
  leaves the watermark where it was, and the next fetch reads the window again.

A cursor or next URL that comes back twice, a keyset page that makes no progress, or an offset
or page-number request answered with the very page before it (a server that ignores the
parameter) is an error rather than an endless fetch.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urljoin

from pipeline.config import SourceConfig
from pipeline.config_sources import (
    CursorPagination,
    KeysetPagination,
    LinkPagination,
    NextUrlPagination,
    OffsetPagination,
    PagePagination,
)
from pipeline.delta import Watermark
from pipeline.errors import PermanentError
from pipeline.sources.limits import fingerprint
from pipeline.sources.replies import Reply as Reply  # re-exported: paginators speak it
from pipeline.sources.replies import dig as dig
from pipeline.sources.replies import next_link as next_link
from pipeline.sources.replies import total_of
from pipeline.timefmt import TimeFormat, floor_time


class Paginator:
    """One request, no paging (``type: none``); the base of the others."""

    def __init__(self, since: datetime | None = None) -> None:
        self.since = since
        self.done = False
        self.checkpoint = True
        self.trusted = True

    def params(self) -> dict[str, Any]:
        return {}

    def next_url(self) -> str | None:
        return None

    def bound(self) -> tuple[datetime | None, str]:
        """The delta's lower bound for the next request: (updated, id); id '' = any."""
        return self.since, ""

    def advance(self, reply: Reply) -> None:
        self.done = True

    def resume_state(self) -> dict[str, Any] | None:
        """Where a later run can take this pass up again (JSON-able); None: it cannot."""
        return None

    def resume(self, state: dict[str, Any]) -> None:
        """Take up a pass where ``resume_state`` left it."""


def _limit(param: str | None, limit: int) -> dict[str, Any]:
    return {param: limit} if param else {}


def _short(reply: Reply, limit: int, stop: bool) -> bool:
    return stop and len(reply.items) < limit


class _SamePage:
    """Detects a position (offset, page number) that moved while the page did not."""

    def __init__(self, param: str) -> None:
        self.param = param
        self.last: str | None = None

    def check(self, reply: Reply, position: int) -> None:
        current = fingerprint(reply.items, reply.keys, reply.digest)
        if reply.items and current == self.last:
            raise PermanentError(
                f"pagination loop: {self.param}={position} returned the same page as the "
                f"request before it: does the API honour {self.param!r}?"
            )
        self.last = current


class CursorPaginator(Paginator):
    """A cursor token from the response body, sent back as a parameter."""

    def __init__(self, config: CursorPagination, since: datetime | None = None) -> None:
        super().__init__(since)
        self.config = config
        self.cursor: str | None = None
        self.seen: set[str] = set()

    def params(self) -> dict[str, Any]:
        params = _limit(self.config.limit_param, self.config.limit)
        if self.cursor:
            params[self.config.cursor_param] = self.cursor
        return params

    def advance(self, reply: Reply) -> None:
        cursor = dig(reply.body, self.config.cursor_path)
        short = _short(reply, self.config.limit, self.config.stop_on_short_page)
        if not cursor or not reply.items or short:
            self.done = True
            return
        cursor = str(cursor)
        if cursor in self.seen:
            raise PermanentError(f"pagination loop: cursor {cursor[:40]!r} came back twice")
        self.seen.add(cursor)
        self.cursor = cursor

    def resume_state(self) -> dict[str, Any] | None:
        return {"cursor": self.cursor} if self.cursor else None

    def resume(self, state: dict[str, Any]) -> None:
        self.cursor = str(state["cursor"])


class NextUrlPaginator(Paginator):
    """Follow the next page's URL: from the body (``next_url``) or the ``Link`` header."""

    def __init__(
        self, config: NextUrlPagination | LinkPagination, since: datetime | None = None
    ) -> None:
        super().__init__(since)
        self.config = config
        self.url: str | None = None
        self.seen: set[str] = set()

    def params(self) -> dict[str, Any]:
        return {} if self.url else _limit(self.config.limit_param, self.config.limit)

    def next_url(self) -> str | None:
        return self.url

    def advance(self, reply: Reply) -> None:
        found = self._find(reply)
        short = _short(reply, self.config.limit, self.config.stop_on_short_page)
        if not found or not reply.items or short:
            self.done = True
            return
        url = urljoin(reply.url, str(found))
        if url in self.seen:
            raise PermanentError(f"pagination loop: next URL {url[:80]!r} came back twice")
        self.seen.add(url)
        self.url = url

    def resume_state(self) -> dict[str, Any] | None:
        return {"url": self.url} if self.url else None

    def resume(self, state: dict[str, Any]) -> None:
        self.url = str(state["url"])

    def _find(self, reply: Reply) -> Any:
        if isinstance(self.config, NextUrlPagination):
            return dig(reply.body, self.config.next_url_path)
        return next_link(reply.headers.get("Link") or reply.headers.get("link"))


class OffsetPaginator(Paginator):
    """offset/limit, each request overlapping the previous page by ``overlap`` rows.

    A row before the offset that is changed or deleted while paging shifts every later row one
    place back, and a plain ``offset += limit`` then skips one. Here the next page must start
    with a row of the previous page's overlap, unchanged; if it does not, rows may have been
    skipped: the pass is no longer trusted and the watermark stops moving.
    """

    def __init__(self, config: OffsetPagination, since: datetime | None = None) -> None:
        super().__init__(since)
        self.config = config
        default = max(1, config.limit // 10) if config.limit > 1 else 0
        self.overlap = default if config.overlap is None else config.overlap
        self.offset = 0
        self.tail: list[Watermark] = []
        self.same = _SamePage(config.offset_param)

    def params(self) -> dict[str, Any]:
        params = _limit(self.config.limit_param, self.config.limit)
        params[self.config.offset_param] = self.offset
        return params

    def advance(self, reply: Reply) -> None:
        self.same.check(reply, self.offset)
        keys = [k for k in reply.keys if k is not None]
        if self.tail and (not keys or keys[0] not in self.tail):
            self.trusted = self.checkpoint = False
        total = total_of(reply, self.config.total_path, self.config.total_header)
        count = len(reply.items)
        end = count == 0 or (total is not None and self.offset + count >= total)
        if end or _short(reply, self.config.limit, self.config.stop_on_short_page):
            self.done = True
            return
        step = max(1, count - self.overlap)
        self.tail = keys[step:] if self.overlap else []
        self.offset += step

    def resume_state(self) -> dict[str, Any] | None:
        tail = [[k.updated.isoformat(), k.id] for k in self.tail]
        return {"offset": self.offset, "tail": tail, "trusted": self.trusted}

    def resume(self, state: dict[str, Any]) -> None:
        self.offset = int(state["offset"])
        self.tail = [Watermark(datetime.fromisoformat(u), i) for u, i in state["tail"]]
        self.trusted = self.checkpoint = bool(state["trusted"])


class PagePaginator(Paginator):
    """Page numbers. Overlap is impossible, so a pass is trusted only when it saw no change:
    no record came back with a newer version (it moved) and the total count stayed the same.
    The watermark moves only after a trusted pass."""

    def __init__(self, config: PagePagination, since: datetime | None = None) -> None:
        super().__init__(since)
        self.config = config
        self.page = config.first_page
        self.seen: dict[str, datetime] = {}
        self.total: int | None = None
        self.checkpoint = False
        self.same = _SamePage(config.page_param)

    def params(self) -> dict[str, Any]:
        params = _limit(self.config.limit_param, self.config.limit)
        params[self.config.page_param] = self.page
        return params

    def advance(self, reply: Reply) -> None:
        self.same.check(reply, self.page)
        for key in reply.keys:
            if key is not None and self.seen.setdefault(key.id, key.updated) != key.updated:
                self.trusted = False
        total = total_of(reply, self.config.total_path, self.config.total_header)
        if total is not None and self.total is not None and total != self.total:
            self.trusted = False
        self.total = total if total is not None else self.total
        read = (self.page - self.config.first_page + 1) * self.config.limit
        end = not reply.items or (total is not None and read >= total)
        if end or _short(reply, self.config.limit, self.config.stop_on_short_page):
            self.done = True
            return
        self.page += 1

    def resume_state(self) -> dict[str, Any] | None:
        """The versions seen stay behind: a resumed pass checks the total count only."""
        return {"page": self.page, "total": self.total, "trusted": self.trusted}

    def resume(self, state: dict[str, Any]) -> None:
        self.page, self.total = int(state["page"]), state["total"]
        self.trusted = bool(state["trusted"])


class KeysetPaginator(Paginator):
    """Re-query from the last (updated, id) seen, on a listing ordered by updated, then id.

    With ``id_param`` (or ``{id}`` in the template or body) the API returns only what comes
    after (updated, id), and each page must move that key. Otherwise the bound is closed
    (``updated >= last``), and the rows sharing the last timestamp (at the resolution of the
    delta format) come back. Past a page full of one timestamp the paginator skips the rows seen
    with ``offset_param`` (overlapping one, to detect a shift), or asks for a larger page up to
    ``max_limit``, or fails: it never loops and never skips silently.
    """

    def __init__(
        self, config: KeysetPagination, since: datetime | None, *, by_id: bool, fmt: TimeFormat
    ) -> None:
        super().__init__(since)
        self.config, self.by_id, self.fmt = config, by_id, fmt
        self.updated, self.id = since, ""
        self.limit = config.limit
        self.tie = 0  # rows of the bound's timestamp already read (offset_param)
        self.expect: Watermark | None = None  # the row the next page must start with

    def bound(self) -> tuple[datetime | None, str]:
        return self.updated, self.id if self.by_id else ""

    def params(self) -> dict[str, Any]:
        config = self.config
        params = _limit(config.limit_param, self.limit)
        if config.id_param and self.id:
            params[config.id_param] = self.id
        if config.offset_param and self.tie:
            params[config.offset_param] = self.tie - 1
        return params

    def advance(self, reply: Reply) -> None:
        keys = [k for k in reply.keys if k is not None]
        if self.expect is not None and (not keys or keys[0] != self.expect):
            self.trusted = self.checkpoint = False
        short = len(reply.items) < self.limit
        if not keys and not short:
            raise PermanentError(
                f"keyset paging: all {len(reply.items)} records of a full page were rejected "
                "(see the dead letters), so no key moves the bound past them"
            )
        if not keys:
            self.done = True
            return
        last = max(keys)
        if self.by_id:
            self._after(last)
        elif not self._closed(keys, last, short):
            return
        self.done = short and self.config.stop_on_short_page

    def _after(self, last: Watermark) -> None:
        stuck = self.updated is not None and (
            last.updated < self.updated or (last.updated, last.id) == (self.updated, self.id)
        )
        if stuck:
            raise PermanentError(
                f"keyset paging made no progress past ({last.updated.isoformat()}, "
                f"{last.id!r}): does the API honour {self.config.id_param or '{id}'}?"
            )
        self.updated, self.id = last.updated, last.id

    def _closed(self, keys: list[Watermark], last: Watermark, short: bool) -> bool:
        """Move a closed bound; False when the page needs another request at the same bound."""
        top = floor_time(last.updated, self.fmt)
        if self.updated is None or top > floor_time(self.updated, self.fmt):
            self.updated, self.limit = last.updated, self.config.limit
            self.tie = sum(1 for k in keys if floor_time(k.updated, self.fmt) == top)
            self.expect = last if self.config.offset_param else None
            return True
        if short:  # the rest of this timestamp fitted: nothing after it
            self.done = True
            return False
        if self.config.offset_param:
            self.tie += len(keys) - (1 if self.tie else 0)
            self.expect = last
            return False
        if self.limit < (self.config.max_limit or self.config.limit):
            self.limit = min(self.limit * 2, self.config.max_limit or self.limit)
            return False
        raise PermanentError(
            f"keyset paging: more than {self.limit} records share the timestamp "
            f"{top.isoformat()}: set pagination.id_param or offset_param, or a max_limit "
            "(at most the API's largest page)"
        )


def make_paginator(config: SourceConfig, since: datetime | None) -> Paginator:
    pagination = config.pagination
    if isinstance(pagination, CursorPagination):
        return CursorPaginator(pagination, since)
    if isinstance(pagination, NextUrlPagination | LinkPagination):
        return NextUrlPaginator(pagination, since)
    if isinstance(pagination, OffsetPagination):
        return OffsetPaginator(pagination, since)
    if isinstance(pagination, PagePagination):
        return PagePaginator(pagination, since)
    if isinstance(pagination, KeysetPagination):
        return KeysetPaginator(
            pagination, since, by_id=config.keyset_by_id, fmt=config.delta.format
        )
    return Paginator(since)
