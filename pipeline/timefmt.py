"""Timestamps as sources write them, and the one form ihub stores and compares.

Every instant is normalised to an aware UTC datetime; the version string of a record is that
instant as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, which sorts lexicographically in time order.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

# One home for these, below the engine; re-exported for the engine's own modules.
from models.values import from_version_string as from_version_string
from models.values import utcnow as utcnow
from models.values import version_string as version_string

TimeFormat = Literal["iso", "datetime", "epoch", "epoch_ms"]


def parse_time(value: object, fmt: TimeFormat = "iso", *, tz: str = "UTC") -> datetime:
    """An aware UTC datetime from a source's value; naive values are read in ``tz``."""
    if value is None or value == "":
        raise ValueError("timestamp is missing")
    if fmt in ("epoch", "epoch_ms") or isinstance(value, int | float):
        seconds = float(value) / (1000.0 if fmt == "epoch_ms" else 1.0)
        return datetime.fromtimestamp(seconds, UTC)
    text = str(value).strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ZoneInfo(tz))
    return parsed.astimezone(UTC)


def format_time(moment: datetime, fmt: TimeFormat = "iso", *, tz: str = "UTC") -> str:
    """A datetime written the way a source expects it in a query."""
    moment = moment.astimezone(ZoneInfo(tz))
    if fmt == "epoch":
        return str(int(moment.timestamp()))
    if fmt == "epoch_ms":
        return str(int(moment.timestamp() * 1000))
    if fmt == "datetime":
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    if moment.utcoffset() == timedelta(0):
        return moment.replace(tzinfo=None).isoformat() + "Z"
    return moment.isoformat()


_TICKS = {
    "iso": timedelta(microseconds=1),
    "datetime": timedelta(seconds=1),
    "epoch": timedelta(seconds=1),
    "epoch_ms": timedelta(milliseconds=1),
}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def tick(fmt: TimeFormat) -> timedelta:
    """The resolution ``format_time`` keeps: instants closer than this write the same text."""
    return _TICKS[fmt]


def floor_time(moment: datetime, fmt: TimeFormat) -> datetime:
    """``moment`` cut to what ``format_time`` writes (zone offsets are whole minutes, so the cut
    is the same in every zone)."""
    step = _TICKS[fmt] // timedelta(microseconds=1)
    since_epoch = (moment - EPOCH) // timedelta(microseconds=1)
    return EPOCH + timedelta(microseconds=since_epoch - since_epoch % step)
