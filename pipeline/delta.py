"""The watermark: pure functions over a typed (updated, id) key.

The watermark is the greatest (updated, id) durably staged. The next fetch starts at
``updated - lookback`` (closed bound), so late commits and clock skew are re-read; the overlap is
removed when staging, by record id + version. A deletion travels as a staged record too: its
payload carries ``DELETED_KEY`` and its version is the instant of the deletion.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from models.values import SourceRecord as SourceRecord  # re-exported: the engine's record
from models.values import Watermark as Watermark

DELETED_KEY = "_ihub_deleted"  # set in a staged payload that stands for a deletion


def is_deletion(payload: object) -> bool:
    """Whether a staged payload is a deletion (a tombstone, or a record flagged deleted)."""
    return isinstance(payload, dict) and payload.get(DELETED_KEY) is True


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
