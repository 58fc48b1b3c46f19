"""What one fetch run gives its source, and page-level retries in place.

A transient error on one page (5xx, 408, 425, 429, a connection error or timeout) is retried a
few times with ``pipeline.retry.backoff_seconds``, Retry-After winning (capped), before the run
fails; the next run then resumes from the last checkpoint instead of page one. Every wait goes
through ``RunBounds.wait``, which the fetch makes a lease heartbeat.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from pipeline.errors import TransientError
from pipeline.retry import backoff_seconds

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RunBounds:
    """``until``: the run's upper bound (its start instant); ``wait``: how to sleep; and the
    page retry policy. The default retries nothing (a source used outside a fetch run)."""

    until: datetime | None = None
    wait: Callable[[float], None] = time.sleep
    retries: int = 0
    backoff: float = 1.0
    backoff_max: float = 30.0


def with_retries(send: Callable[[], T], bounds: RunBounds) -> T:
    """``send()``, retried in place on a transient error up to ``bounds.retries`` times."""
    attempt = 0
    while True:
        try:
            return send()
        except TransientError as exc:
            attempt += 1
            if attempt > bounds.retries:
                raise
            delay = backoff_seconds(
                attempt, base=bounds.backoff, cap=bounds.backoff_max, retry_after=exc.retry_after
            )
            log.warning("%s; retry %d of %d in %.1fs", exc, attempt, bounds.retries, delay)
            bounds.wait(delay)
