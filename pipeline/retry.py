"""The backoff policy: one pure function, tested without Celery and without sleeping.

Celery's own ``retry_backoff`` truncates to whole seconds, draws jitter from [0, countdown]
with a factor of at least 1, and ignores Retry-After (PITFALLS 14); the tasks pass this
function's result to ``Task.retry(countdown=...)`` instead.
"""

from __future__ import annotations

import random


def backoff_seconds(
    attempt: int,
    *,
    base: float,
    cap: float,
    jitter: bool = True,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Delay before retry number ``attempt`` (1 for the first retry).

    Exponential (``base * 2**(attempt-1)``, capped at ``cap``) with full jitter, so that many
    records failing together do not come back together. A Retry-After from the remote side wins,
    still capped so a countdown never outlives the broker's visibility timeout.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if retry_after is not None:
        return min(max(0.0, retry_after), cap)
    ceiling = min(cap, base * 2 ** (attempt - 1))
    if not jitter:
        return ceiling
    return (rng or random).uniform(0.0, ceiling)


def expected_total_wait(max_retries: int, *, base: float, cap: float) -> float:
    """Mean total wait across all retries with full jitter: what an outage must fit into."""
    return sum(min(cap, base * 2 ** (n - 1)) / 2 for n in range(1, max_retries + 1))
