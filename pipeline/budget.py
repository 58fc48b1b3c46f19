"""One fetch run's bounds: the upper bound (its start instant) and its budget of pages and
seconds, so that every run ends whatever the source's pace (ARCHITECTURE invariant 7)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from pipeline.config import FetchConfig
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
