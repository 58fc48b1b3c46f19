"""A declarative REST source: pages of records changed since a lower bound."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import requests

from pipeline.config import SourceConfig
from pipeline.delta import SourceRecord
from pipeline.errors import PermanentError, classify_exception, classify_response
from pipeline.sources.paginators import dig, make_paginator
from pipeline.timefmt import format_time, parse_time


@dataclass
class Reject:
    """A record the source sent that cannot be staged normally: it goes to the dead letters."""

    payload: Any
    reason: str

    @property
    def record_id(self) -> str:
        if isinstance(self.payload, dict) and self.payload.get("id") not in (None, ""):
            return str(self.payload["id"])
        digest = hashlib.sha256(repr(self.payload).encode()).hexdigest()[:16]
        return f"unparseable:{digest}"


@dataclass
class Page:
    records: list[SourceRecord] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


class RestSource:
    def __init__(
        self, name: str, config: SourceConfig, auth: requests.auth.AuthBase | None = None
    ) -> None:
        self.name = name
        self.config = config
        self.session = requests.Session()
        self.session.auth = auth
        self.session.headers.update(config.headers)

    def pages(self, since: datetime | None) -> Iterator[Page]:
        """Each page's records, in the order the source returned them."""
        paginator = make_paginator(self.config.pagination)
        base = dict(self.config.params)
        if since is not None:
            delta = self.config.delta
            base[delta.param] = format_time(since, delta.format, tz=delta.timezone)
        while not paginator.done:
            body = self._get({**base, **paginator.params()})
            items = dig(body, self.config.records)
            if not isinstance(items, list):
                raise PermanentError(
                    f"source {self.name}: expected a list at {self.config.records or 'top level'!r}"
                    f" in the response, got {type(items).__name__}"
                )
            paginator.advance(body, items)
            yield self._page(items)

    def _page(self, items: list[Any]) -> Page:
        page = Page()
        for item in items:
            try:
                page.records.append(self.parse(item))
            except PermanentError as exc:
                page.rejects.append(Reject(item, str(exc)))
        return page

    def parse(self, item: Any) -> SourceRecord:
        if not isinstance(item, dict):
            raise PermanentError(f"source {self.name}: a record is not an object: {item!r:.80}")
        record_id = dig(item, self.config.id)
        if record_id is None or record_id == "":
            raise PermanentError(f"source {self.name}: a record has no {self.config.id!r} field")
        try:
            updated = parse_time(dig(item, self.config.updated), self.config.updated_format)
        except (ValueError, TypeError, OverflowError) as exc:
            raise PermanentError(
                f"source {self.name}: record {record_id}: field {self.config.updated!r}: {exc}"
            ) from None
        return SourceRecord(str(record_id), updated, item)

    def _get(self, params: dict[str, str]) -> Any:
        what = f"source {self.name}"
        try:
            response = self.session.get(self.config.url, params=params, timeout=self.config.timeout)
        except requests.RequestException as exc:
            raise classify_exception(exc, what=what) from None
        error = classify_response(response, what=what)
        if error is not None:
            raise error
        try:
            return response.json()
        except ValueError:
            raise PermanentError(f"{what}: the response is not JSON") from None
