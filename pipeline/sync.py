"""The two steps of a sync, free of Celery: fetch a delta, and process one staged record.

The tasks in ``tasks/`` call these and turn their outcome into a retry; tests and the
benchmarks can call them directly.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from models import integrations, leases, queue, runs
from models.db import session_scope
from models.schema import FetchRun, IntegrationStatus
from pipeline.delta import Watermark, advance, lower_bound
from pipeline.errors import ReauthRequired, TransientError
from pipeline.hub import Hub
from pipeline.retry import backoff_seconds
from pipeline.timefmt import utcnow

log = logging.getLogger(__name__)

MAX_CRASH_REDELIVERIES = 3
Publish = Callable[[list[int]], None]


@dataclass(frozen=True)
class FetchResult:
    status: str  # ok | paused | busy | lost_race
    run_id: int | None = None
    pages: int = 0
    fetched: int = 0
    staged: int = 0
    unpublished: int = 0
    watermark: Watermark | None = None


def fetch_delta(hub: Hub, name: str, publish: Publish, *, owner: str) -> FetchResult:
    """Stage every record changed since the watermark, page by page, and publish new rows.

    Each page is staged and the watermark checkpointed in one transaction, before any task for
    it is published: a crash at any point loses nothing, and a failed publish only delays rows
    that the reconciler will republish.
    """
    url = hub.database_url
    state = integrations.load(url, name)
    if state.status == IntegrationStatus.REAUTH_REQUIRED:
        if not hub.has_new_credentials(name):
            return FetchResult("paused")
        resume(hub, name, publish)  # a new refresh token in the config: try it
    lease = f"fetch:{name}"
    if not leases.acquire(url, lease, owner, ttl=hub.settings.fetch_time_limit + 60):
        return FetchResult("busy")
    run_id = runs.start(url, name)
    try:
        result = _fetch_pages(hub, name, publish, run_id)
    except ReauthRequired as exc:
        integrations.pause_for_reauth(url, name, exc.reason)
        runs.finish(url, run_id, status="paused", error=str(exc))
        log.warning("%s: paused, re-authorisation required: %s", name, exc.reason)
        return FetchResult("paused", run_id)
    except Exception as exc:
        runs.finish(url, run_id, status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        integrations.mark_fetch(url, name, success=False)
        raise
    finally:
        leases.release(url, lease, owner)
    runs.finish(url, run_id, status=result.status)
    integrations.mark_fetch(url, name, success=result.status == "ok")
    return result


def _fetch_pages(hub: Hub, name: str, publish: Publish, run_id: int) -> FetchResult:
    url, config = hub.database_url, hub.integration(name)
    watermark = integrations.watermark(url, name)
    since = lower_bound(watermark, timedelta(seconds=config.source.delta.lookback))
    pages = fetched = staged = unpublished = 0
    for page in hub.source(name).pages(since):
        with session_scope(url) as session:
            new_ids = queue.stage(
                session, name, run_id, page.records, due_in=hub.settings.reconcile_after
            )
            for reject in page.rejects:
                queue.stage_dead(
                    session, name, run_id, reject.record_id, reject.payload, reject.reason
                )
            moved = advance(watermark, page.records)
            if not integrations.move_watermark(session, name, watermark, moved):
                session.rollback()
                return FetchResult(
                    "lost_race", run_id, pages, fetched, staged, unpublished, watermark
                )
            run = session.get(FetchRun, run_id)
            if run is not None:
                run.pages += 1
                run.fetched += len(page.records) + len(page.rejects)
                run.staged += len(new_ids)
        watermark = moved
        pages, fetched, staged = pages + 1, fetched + len(page.records), staged + len(new_ids)
        unpublished += _publish_safely(publish, new_ids, name)
    return FetchResult("ok", run_id, pages, fetched, staged, unpublished, watermark)


def _publish_safely(publish: Publish, row_ids: list[int], name: str) -> int:
    if not row_ids:
        return 0
    try:
        publish(row_ids)
    except Exception as exc:  # the broker is down: the rows are staged, the reconciler has them
        log.warning(
            "%s: could not publish %d staged rows (%s); the reconciler will",
            name,
            len(row_ids),
            type(exc).__name__,
        )
        return len(row_ids)
    return 0


@dataclass(frozen=True)
class Outcome:
    status: str  # done | retry | dead | skipped | paused
    countdown: float = 0.0
    error: BaseException | None = None


def process_record(hub: Hub, row_id: int, *, worker: str | None = None) -> Outcome:
    """Write one staged record to its sink, and record what happened."""
    url = hub.database_url
    claim = queue.claim(url, row_id, deadline=hub.settings.process_time_limit + 30)
    if claim is None:
        return Outcome("skipped")
    if claim.crash_redeliveries > MAX_CRASH_REDELIVERIES:
        message = (
            f"the worker processing this record was lost {claim.crash_redeliveries} "
            "times (killed, out of memory, or cut off from the broker)"
        )
        queue.mark_dead(
            url, row_id, error_class="WorkerLost", message=message, traceback=None, worker=worker
        )
        return Outcome("dead")
    if hub.paused(claim.integration):
        queue.release(url, row_id, due_in=hub.settings.reconcile_after)
        return Outcome("paused")
    started = time.perf_counter()
    try:
        hub.sink(claim.integration).upsert(
            claim.payload, queue.sink_version(claim.version, claim.row_id)
        )
    except ReauthRequired as exc:
        # The target refused our credential: the record waits, its retry budget untouched.
        integrations.pause_for_reauth(url, claim.integration, exc.reason)
        hub.forget_pause_state(claim.integration)
        queue.release(url, row_id, due_in=hub.settings.reconcile_after)
        log.warning("%s: paused, re-authorisation required: %s", claim.integration, exc.reason)
        return Outcome("paused", error=exc)
    except TransientError as exc:
        return _retry_or_die(hub, claim, exc, worker)
    except Exception as exc:
        _dead(url, row_id, exc, worker)
        return Outcome("dead", error=exc)
    queue.mark_done(url, row_id, (time.perf_counter() - started) * 1000)
    return Outcome("done")


def _retry_or_die(hub: Hub, claim: queue.Claim, exc: TransientError, worker: str | None) -> Outcome:
    policy = hub.integration(claim.integration).retry
    if claim.attempts > policy.max_retries:
        _dead(hub.database_url, claim.row_id, exc, worker)
        return Outcome("dead", error=exc)
    countdown = backoff_seconds(
        claim.attempts,
        base=policy.backoff,
        cap=policy.backoff_max,
        jitter=policy.jitter,
        retry_after=exc.retry_after,
    )
    due = utcnow() + timedelta(seconds=countdown + hub.settings.reconcile_after)
    queue.mark_retrying(hub.database_url, claim.row_id, exc, due)
    return Outcome("retry", countdown, exc)


def _dead(url: str, row_id: int, exc: BaseException, worker: str | None) -> None:
    trace = "".join(traceback.format_exception(exc))
    queue.mark_dead(
        url,
        row_id,
        error_class=type(exc).__name__,
        message=str(exc)[:4000],
        traceback=trace,
        worker=worker,
    )


def resume(hub: Hub, name: str, publish: Publish) -> int:
    """Un-pause an integration and send the records that waited; how many were sent."""
    integrations.resume(hub.database_url, name)
    hub.forget_pause_state(name)
    waiting = queue.reopen(hub.database_url, name, due_in=hub.settings.reconcile_after)
    _publish_safely(publish, waiting, name)
    return len(waiting)


def reconcile(hub: Hub, publish: Publish) -> int:
    """Republish open rows past their deadline; the count republished."""
    paused = integrations.paused_names(hub.database_url)
    ids = queue.republish_due(hub.database_url, grace=hub.settings.reconcile_after, skip=paused)
    for start in range(0, len(ids), 500):
        publish(ids[start : start + 500])
    return len(ids)
