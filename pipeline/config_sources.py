"""The source side of an integration definition: delta placement, pagination, deletions, and
the transform between source and sink. ``pipeline.config`` re-exports every name here.

Each pagination style is its own model, so a key that belongs to another style is an unknown
key (an error), not a setting silently ignored.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from pipeline.timefmt import TimeFormat


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeltaConfig(_Strict):
    """Where the delta's lower bound goes in a request, and how it is written."""

    param: str | None = Field(
        "updated_since",
        description="query parameter (a dotted body path with method POST) carrying the bound;"
        " null when only {watermark} placeholders in `body` carry it",
    )
    template: str | None = Field(
        None, description="the parameter's value, {watermark} and {id} replaced"
    )
    format: TimeFormat = "iso"
    timezone: str = Field("UTC", description="zone of naive timestamps, read and written")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"expected an IANA time zone such as UTC, got {value!r}") from None
        return value

    lookback: float = Field(30.0, ge=0, description="seconds re-read before the watermark")
    start: datetime | None = Field(
        None, description="lower bound of a first load (UTC unless it says otherwise)"
    )

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC) if value is not None else None


class _Pages(_Strict):
    limit: int = Field(100, ge=1, le=10_000)
    limit_param: str | None = "limit"


class CursorPagination(_Pages):
    """A cursor token from the response body, sent back as a parameter."""

    type: Literal["cursor"] = "cursor"
    cursor_path: str = "next_cursor"
    cursor_param: str = "cursor"
    stop_on_short_page: bool = False


class NextUrlPagination(_Pages):
    """The next page's URL, from the response body."""

    type: Literal["next_url"]
    next_url_path: str = "next"
    stop_on_short_page: bool = False


class LinkPagination(_Pages):
    """The next page's URL, from the RFC 8288 (5988) ``Link`` header, rel="next"."""

    type: Literal["link"]
    stop_on_short_page: bool = False


class _Positional(_Pages):
    total_path: str | None = Field(None, description="dotted path of the total count")
    total_header: str | None = Field(None, description="header of the total count")
    stop_on_short_page: bool = True


class OffsetPagination(_Positional):
    """offset/limit. Each page re-reads ``overlap`` rows of the one before, so that a shift
    (a row before the offset changed or deleted while paging) is detected."""

    type: Literal["offset"]
    offset_param: str = "offset"
    overlap: int | None = Field(None, ge=0, description="default: max(1, limit // 10)")

    @model_validator(mode="after")
    def _progress(self) -> OffsetPagination:
        if self.overlap is not None and self.overlap >= self.limit:
            raise ValueError("overlap must be smaller than limit")
        return self


class PagePagination(_Positional):
    """Page numbers. A pass that saw the source change is not trusted (see README)."""

    type: Literal["page"]
    page_param: str = "page"
    first_page: int = Field(1, ge=0)


class KeysetPagination(_Pages):
    """Re-query from the last (updated, id) seen; the listing is ordered by updated, then id."""

    type: Literal["keyset"]
    id_param: str | None = Field(None, description="the API returns only (updated, id) after it")
    offset_param: str | None = Field(None, description="skips the rows of one timestamp seen")
    max_limit: int | None = Field(None, ge=1, le=10_000, description="grow a page up to this")
    stop_on_short_page: bool = True
    safe_id: str = Field(
        r"[A-Za-z0-9_.:@-]+",
        description="ids allowed into a {id} placeholder of delta.template or body (a regular"
        " expression); another id would rewrite the query: its record is a dead letter",
    )

    @field_validator("safe_id")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"expected a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_tie_breaker(self) -> KeysetPagination:
        if self.id_param and self.offset_param:
            raise ValueError("set id_param or offset_param, not both")
        if self.max_limit is not None and self.max_limit < self.limit:
            raise ValueError("max_limit must be at least limit")
        return self


class NoPagination(_Strict):
    type: Literal["none"]


class SourceLimits(_Strict):
    """What one response may hold: a source is untrusted input (ARCHITECTURE invariant 8)."""

    max_body_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="bytes of one response (decoded), read streamed"
    )
    max_records_per_page: int = Field(50_000, ge=1, description="records in one response")
    max_depth: int = Field(
        64, ge=2, le=500, description="nesting of one record; a deeper record is a dead letter"
    )


_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def host_entry(value: str) -> str:
    """An ``allowed_hosts`` entry: a host name or address, optionally ``:port``; no scheme."""
    if not _HOST.fullmatch(value):
        raise ValueError(f"expected a host or host:port (no scheme, no path), got {value!r}")
    return value.lower()


def _pagination_tag(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("type", "cursor"))
    return str(getattr(value, "type", "cursor"))


PaginationConfig = Annotated[
    Annotated[CursorPagination, Tag("cursor")]
    | Annotated[NextUrlPagination, Tag("next_url")]
    | Annotated[LinkPagination, Tag("link")]
    | Annotated[OffsetPagination, Tag("offset")]
    | Annotated[PagePagination, Tag("page")]
    | Annotated[KeysetPagination, Tag("keyset")]
    | Annotated[NoPagination, Tag("none")],
    Discriminator(_pagination_tag),
]
_PAGINATION_TAGS = frozenset({"cursor", "next_url", "link", "offset", "page", "keyset"})


def http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


class TombstoneConfig(_Strict):
    """A listing of deleted records, read after each delta from the same lower bound."""

    url: str
    records: str = ""
    id: str = "id"
    updated: str = Field("deleted_at", description="when it was deleted")
    updated_format: TimeFormat = "iso"
    delta: DeltaConfig = Field(default_factory=DeltaConfig)
    pagination: PaginationConfig = Field(default_factory=CursorPagination)
    params: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value)


class DeletesConfig(_Strict):
    """How the source shows deletions, and what the sink does with them."""

    field: str | None = Field(None, description="dotted path of a deleted flag in each record")
    values: list[str | int | float | bool] | None = Field(
        None, description="values of `field` that mean deleted; default: any true value"
    )
    endpoint: TombstoneConfig | None = None
    action: Literal["mark", "delete"] = "mark"

    @model_validator(mode="after")
    def _some_signal(self) -> DeletesConfig:
        if self.field is None and self.endpoint is None:
            raise ValueError("set 'field' (a deleted flag) or 'endpoint' (a tombstone listing)")
        return self


CastType = Literal["str", "int", "float", "bool", "datetime", "json"]


class FieldMap(_Strict):
    """One target field: from a dotted ``path`` (or a constant ``const``), optionally cast."""

    path: str | None = None
    const: Any = None
    type: CastType | None = None
    format: TimeFormat = Field("iso", description="how a `datetime` value is written")
    default: Any = Field(None, description="when the path is missing or null")

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        """``title: short_description`` is ``title: {path: short_description}``."""
        return {"path": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _path_or_const(self) -> FieldMap:
        if (self.path is None) == ("const" not in self.model_fields_set):
            raise ValueError("set exactly one of 'path' and 'const'")
        return self


class TransformConfig(_Strict):
    """Applied to each record before the sink: the field mapping, then the callable."""

    fields: dict[str, FieldMap] = Field(default_factory=dict)
    unmapped: Literal["drop", "keep"] = Field("drop", description="fields not named in `fields`")
    callable: str | None = Field(None, description="package.module:function, record -> record")

    @field_validator("callable")
    @classmethod
    def _callable_path(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][\w.]*[:.][A-Za-z_]\w*", value):
            raise ValueError(f"expected 'package.module:function', got {value!r}")
        return value
