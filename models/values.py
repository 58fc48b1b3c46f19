"""Value types that the engine and the models both speak: instants, versions, record keys.

They live here, below the engine, because the arrow points one way: ``pipeline`` drives
``models``' queries and ``models`` imports nothing from ``pipeline``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property


def utcnow() -> datetime:
    """Naive UTC now: the database columns hold naive UTC on every backend."""
    return datetime.now(UTC).replace(tzinfo=None)


def version_string(moment: datetime) -> str:
    """The sortable text form used as a record's version and in the watermark."""
    # isoformat, not strftime: the same text, several times faster (two calls per record)
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def from_version_string(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


@dataclass(frozen=True, order=True)
class Watermark:
    updated: datetime
    id: str

    def to_text(self) -> tuple[str, str]:
        return version_string(self.updated), self.id

    @classmethod
    def from_text(cls, updated: str | None, record_id: str | None) -> Watermark | None:
        if not updated:
            return None
        return cls(from_version_string(updated), record_id or "")


@dataclass(frozen=True)
class SourceRecord:
    """One record as fetched: its id, its updated instant, and the payload as the API sent it."""

    id: str
    updated: datetime
    payload: dict[str, object]

    @property
    def key(self) -> Watermark:
        return Watermark(self.updated, self.id)

    @cached_property
    def version(self) -> str:
        return version_string(self.updated)
