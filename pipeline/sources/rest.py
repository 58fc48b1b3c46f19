"""A declarative REST source: pages of records changed since a lower bound.

``pages()`` is the fetch loop and the only code here that sends requests: it asks the paginator
what the next request carries (``pipeline.sources.placement`` puts it together), waits for the
integration's rate limit, sends it, parses the records, and lets the paginator advance. Each
page says whether the watermark may move after it (``checkpoint``, ``trusted``).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import requests

from pipeline.config import SourceConfig
from pipeline.config_sources import TombstoneConfig
from pipeline.delta import DELETED_KEY, SourceRecord, Watermark
from pipeline.errors import PermanentError, classify_exception, classify_response
from pipeline.sources.guard import PinnedSession, allowed_origins, check_followable
from pipeline.sources.limits import (
    Body,
    cap_error_body,
    id_problem,
    read_json,
    too_deep,
    unsafe_in_query,
)
from pipeline.sources.paginators import Reply, dig, make_paginator
from pipeline.sources.placement import ID, Request, build_request
from pipeline.sources.ratelimit import RateLimiter
from pipeline.sources.retrying import RunBounds, with_retries
from pipeline.timefmt import parse_time


@dataclass
class Reject:
    """A record the source sent that cannot be staged normally: it goes to the dead letters."""

    payload: Any
    reason: str
    key: str | None = None

    @property
    def record_id(self) -> str:
        if self.key:
            return self.key
        if isinstance(self.payload, dict) and self.payload.get("id") not in (None, ""):
            return str(self.payload["id"])
        digest = hashlib.sha256(repr(self.payload).encode()).hexdigest()[:16]
        return f"unparseable:{digest}"


@dataclass
class Page:
    records: list[SourceRecord] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    checkpoint: bool = True  # every record up to the last one here has been read
    trusted: bool = True  # nothing suggests the pass skipped a record (so far)
    last: bool = True  # the pass ends with this page
    resume: dict[str, Any] | None = None  # where a later run can take the pass up again


class RestSource:
    def __init__(
        self,
        name: str,
        config: SourceConfig,
        auth: requests.auth.AuthBase | None = None,
        limiter: RateLimiter | None = None,
        session: requests.Session | None = None,
        tombstones: bool = False,
    ) -> None:
        self.name = name
        self.config = config
        self.limiter = limiter
        self.tombstones = tombstones  # every record listed is a deletion
        if session is None:
            session = PinnedSession(config.headers)
            session.auth = auth
        self.session = session
        self.allowed = allowed_origins(config.url, config.allowed_hosts)
        # an id that goes into the query text ({id} of delta.template or body) must be inert
        placed = ID in str(config.delta.template or "") + str(config.body or "")
        self.safe_id = getattr(config.pagination, "safe_id", None) if placed else None

    @property
    def ordered(self) -> bool:
        """Whether the listing comes sorted by updated (keyset paging always asks for that)."""
        return self.config.ordered or self.config.pagination.type == "keyset"

    def pages(
        self,
        since: datetime | None,
        run: RunBounds | None = None,
        resume: dict[str, Any] | None = None,
    ) -> Iterator[Page]:
        """Each page's records, in the order the source returned them, up to ``run.until``.

        On an ordered listing the pass stops at the first record updated after ``until`` (the
        run's start instant): what changed since is the next run's, so a source that changes
        faster than we read cannot keep one run going.
        """
        run = run or RunBounds()
        paginator = make_paginator(self.config, since)
        if resume is not None:
            paginator.resume(resume)
        while not paginator.done:
            next_url = paginator.next_url()
            if next_url:
                check_followable(next_url, self.allowed, what=f"source {self.name}")
            request = build_request(
                self.config, paginator.bound(), paginator.params(), next_url, until=run.until
            )
            send = functools.partial(self._send, request, run)
            body, headers, url = with_retries(send, run)
            items = self._items(body.data)
            page, keys = self._page(items)
            paginator.advance(Reply(body.data, headers, items, keys, url, body.digest))
            page.checkpoint, page.trusted = paginator.checkpoint, paginator.trusted
            page.last = paginator.done or self._cut_at(page, run.until)
            page.resume = None if page.last else paginator.resume_state()
            yield page
            if page.last:
                return

    def _cut_at(self, page: Page, until: datetime | None) -> bool:
        """Drop the records updated after ``until`` from an ordered page; whether any were."""
        if until is None or not self.ordered:
            return False
        for index, record in enumerate(page.records):
            if record.updated > until:
                page.records = page.records[:index]
                return True
        return False

    def deletion_pages(
        self, since: datetime | None, run: RunBounds | None = None
    ) -> Iterator[Page]:
        """The tombstone listing (``deletes.endpoint``) since the same bound; none without one."""
        deletes = self.config.deletes
        if deletes is None or deletes.endpoint is None:
            return iter(())
        tombstones = RestSource(
            f"{self.name} deletions",
            tombstone_config(self.config, deletes.endpoint),
            limiter=self.limiter,
            session=self.session,
            tombstones=True,
        )
        return tombstones.pages(since, run)

    def _items(self, body: Any) -> list[Any]:
        items = dig(body, self.config.records)
        if not isinstance(items, list):
            raise PermanentError(
                f"source {self.name}: expected a list at {self.config.records or 'top level'!r}"
                f" in the response, got {type(items).__name__}"
            )
        limit = self.config.limits.max_records_per_page
        if len(items) > limit:
            raise PermanentError(
                f"source {self.name}: a response holds {len(items):,} records, more than "
                f"source.limits.max_records_per_page ({limit:,}); does the API honour the limit?"
            )
        return items

    def _page(self, items: list[Any]) -> tuple[Page, list[Watermark | None]]:
        page, keys = Page(), list[Watermark | None]()
        for item in items:
            try:
                record = self.parse(item)
            except PermanentError as exc:
                page.rejects.append(self._reject(item, str(exc)))
                keys.append(None)
                continue
            page.records.append(record)
            keys.append(record.key)
        self._check_order(page.records)
        return page, keys

    def _check_order(self, records: list[SourceRecord]) -> None:
        if not self.ordered:
            return
        for before, after in itertools.pairwise(records):
            if after.updated < before.updated:
                raise PermanentError(
                    f"source {self.name}: the listing is declared ordered by "
                    f"{self.config.updated!r} but record {after.id} "
                    f"({after.updated.isoformat()}) comes after {before.id} "
                    f"({before.updated.isoformat()}): add the API's sort parameter "
                    "or set ordered: false"
                )

    def _reject(self, item: Any, reason: str) -> Reject:
        """A dead letter for ``item``; a record too deep to store keeps only its id."""
        key = dig(item, self.config.id) if isinstance(item, dict) else None
        key = None if isinstance(key, dict | list) else key
        if too_deep(item, self.config.limits.max_depth):
            item = {"ihub_rejected": "nested too deep to keep", "id": key}
        return Reject(item, reason, str(key) if key not in (None, "") else None)

    def parse(self, item: Any) -> SourceRecord:
        if not isinstance(item, dict):
            preview = "a nested list" if too_deep(item, 8) else f"{item!r:.80}"
            raise PermanentError(f"source {self.name}: a record is not an object: {preview}")
        record_id = dig(item, self.config.id)
        if record_id is None or record_id == "":
            raise PermanentError(f"source {self.name}: a record has no {self.config.id!r} field")
        self._check_record(item, record_id)
        delta = self.config.delta
        try:
            raw = dig(item, self.config.updated)
            updated = parse_time(raw, self.config.updated_format, tz=delta.timezone)
        except (ValueError, TypeError, OverflowError) as exc:
            raise PermanentError(
                f"source {self.name}: record {record_id}: field {self.config.updated!r}: {exc}"
            ) from None
        if self._deleted(item):
            item = {**item, DELETED_KEY: True}
        return SourceRecord(str(record_id), updated, item)

    def _check_record(self, item: dict[str, Any], record_id: Any) -> None:
        """Refuse, on its own, a record that would fail its page's insert or rewrite a query."""
        problem = id_problem(record_id)
        if problem is None and self.safe_id is not None:
            problem = unsafe_in_query(str(record_id), self.safe_id)
        if problem is not None:
            raise PermanentError(f"source {self.name}: record field {self.config.id!r}: {problem}")
        limit = self.config.limits.max_depth
        if too_deep(item, limit):
            raise PermanentError(
                f"source {self.name}: record {record_id}: nested deeper than {limit} levels "
                "(source.limits.max_depth)"
            )

    def _deleted(self, item: dict[str, Any]) -> bool:
        if self.tombstones:
            return True
        deletes = self.config.deletes
        if deletes is None or deletes.field is None:
            return False
        value = dig(item, deletes.field)
        return bool(value) if deletes.values is None else value in deletes.values

    def _send(self, request: Request, run: RunBounds) -> tuple[Body, Any, str]:
        """One request; the body read streamed within ``limits`` (``pipeline.sources.limits``)."""
        what = f"source {self.name}"
        if self.limiter is not None:
            self.limiter.acquire(run.wait)
        try:
            response = self.session.request(
                request.method,
                request.url,
                params=request.params or None,
                json=request.json,
                timeout=self.config.timeout,
                stream=True,
            )
            cap_error_body(response)
            error = classify_response(response, what=what)
            if error is not None:
                raise error
            body = read_json(response, self.config.limits, what=what)
            return body, response.headers, response.url
        except requests.RequestException as exc:
            raise classify_exception(exc, what=what) from None


def tombstone_config(source: SourceConfig, endpoint: TombstoneConfig) -> SourceConfig:
    """The tombstone listing as a source of its own."""
    return source.model_copy(
        update={
            "url": endpoint.url,
            "method": "GET",
            "body": None,
            "records": endpoint.records,
            "id": endpoint.id,
            "updated": endpoint.updated,
            "updated_format": endpoint.updated_format,
            "ordered": False,
            "delta": endpoint.delta,
            "pagination": endpoint.pagination,
            "params": endpoint.params,
            "deletes": None,
        }
    )
