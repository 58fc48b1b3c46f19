"""One fetch run's bounds: the upper bound (its start instant) and its budget of pages and
seconds, so that every run ends whatever the source's pace (ARCHITECTURE invariant 7)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.config import FetchConfig
from pipeline.delta import Watermark
from pipeline.lease import FetchLease
from pipeline.sources.retrying import RunBounds


@dataclass(frozen=True)
class RunPlan:
    bounds: RunBounds
    max_pages: int
    deadline: float  # time.monotonic()

    def spent(self, pages: int) -> bool:
        return pages >= self.max_pages or time.monotonic() >= self.deadline


def plan_run(
    budget: FetchConfig, lease: FetchLease, *, until: datetime, time_limit: float
) -> RunPlan:
    """Waits renew the lease; the seconds stay under half the task's hard time limit, so a
    run ends by its budget long before Celery would kill it."""
    bounds = RunBounds(
        until, lease.wait, budget.page_retries, budget.page_backoff, budget.page_backoff_max
    )
    seconds = min(budget.max_seconds, time_limit / 2)
    return RunPlan(bounds, budget.max_pages, time.monotonic() + seconds)


@dataclass(frozen=True)
class Continuation:
    """A pass over an unordered listing that a run's budget cut: its bounds, the greatest key
    it saw, whether it stays trusted, and the paginator's place. The next run takes it up, so
    a backfill of any size goes in bounded runs; the watermark moves when the pass ends.
    ``base`` is the watermark the pass started from: after a reset the pass starts over."""

    base: Watermark | None
    since: datetime | None
    until: datetime
    seen: Watermark | None
    trusted: bool
    state: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(
            {
                "base": _key(self.base),
                "since": self.since.isoformat() if self.since else None,
                "until": self.until.isoformat(),
                "seen": _key(self.seen),
                "trusted": self.trusted,
                "state": self.state,
            }
        )

    @classmethod
    def from_json(cls, text: str | None, watermark: Watermark | None) -> Continuation | None:
        """The stored continuation, if it belongs to this watermark and reads back whole."""
        if not text:
            return None
        try:
            data = json.loads(text)
            found = cls(
                _unkey(data["base"]),
                datetime.fromisoformat(data["since"]) if data["since"] else None,
                datetime.fromisoformat(data["until"]),
                _unkey(data["seen"]),
                bool(data["trusted"]),
                dict(data["state"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        return found if found.base == watermark else None


def _key(mark: Watermark | None) -> list[str] | None:
    return [mark.updated.isoformat(), mark.id] if mark else None


def _unkey(value: list[str] | None) -> Watermark | None:
    return Watermark(datetime.fromisoformat(value[0]), value[1]) if value else None
