"""The watermark: pure functions over a typed (updated, id) key.

The watermark is the greatest (updated, id) durably staged. The next fetch starts at
``updated - lookback`` (closed bound), so late commits and clock skew are re-read; the overlap is
removed when staging, by record id + version. A deletion travels as a staged record too: its
payload carries ``DELETED_KEY`` and its version is the instant of the deletion.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pipeline.timefmt import from_version_string, version_string

DELETED_KEY = "_ihub_deleted"  # set in a staged payload that stands for a deletion


def is_deletion(payload: object) -> bool:
    """Whether a staged payload is a deletion (a tombstone, or a record flagged deleted)."""
    return isinstance(payload, dict) and payload.get(DELETED_KEY) is True


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

    @property
    def version(self) -> str:
        return version_string(self.updated)


def lower_bound(watermark: Watermark | None, lookback: timedelta) -> datetime | None:
    """Where the next fetch starts; None means from the beginning (a full load)."""
    if watermark is None:
        return None
    return watermark.updated - lookback


def settle(
    current: Watermark | None, seen: Watermark | None, ceiling: datetime
) -> Watermark | None:
    """Where the watermark may move after a page: to the greatest key seen, but never past
    ``ceiling`` (the instant the fetch started) and never backwards.

    A record read early in a pass and changed while the pass goes on keeps a timestamp the pass
    has already left behind when its clock tick had not ended yet (1-second sources): capped at
    the start of the fetch, the next fetch reads every change made during this one again. The
    lookback then only has to cover clock skew and late commits, not how long a fetch takes.
    """
    if seen is None:
        return current
    target = min(seen, Watermark(ceiling, ""))
    return target if current is None or target > current else current


def advance(watermark: Watermark | None, records: Iterable[SourceRecord]) -> Watermark | None:
    """The watermark after staging ``records``: never moves backwards."""
    keys = [r.key for r in records]
    if watermark is not None:
        keys.append(watermark)
    return max(keys) if keys else None
