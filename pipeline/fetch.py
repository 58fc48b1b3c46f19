"""Fetch a delta, free of Celery: stage what changed at the source, page by page, and publish.

Each page is staged and the watermark checkpointed in one transaction, under a fetch lease
whose heartbeat is that same transaction; a run reads up to its start instant within a budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, timedelta

from models import checkpoint, integrations, queue, runs
from models.db import session_scope
from models.redaction import redact
from models.schema import IntegrationStatus
from pipeline.budget import Continuation, plan_run
from pipeline.delta import Watermark, advance, lower_bound, settle
from pipeline.errors import ReauthRequired
from pipeline.hub import Hub
from pipeline.lease import FetchLease, LeaseLost, lease_name
from pipeline.sources.rest import Page, RestSource
from pipeline.timefmt import utcnow

log = logging.getLogger(__name__)

Publish = Callable[[list[int]], None]


@dataclass(frozen=True)
class FetchResult:
    status: str  # ok | paused | busy | lost_race | lease_lost
    run_id: int | None = None
    pages: int = 0
    fetched: int = 0
    staged: int = 0
    unpublished: int = 0
    watermark: Watermark | None = None
    trusted: bool = True  # False: the pass may have skipped rows, the watermark stayed
    more: bool = False  # the run's budget ended it: start the next run at once


def fetch_delta(
    hub: Hub,
    name: str,
    publish: Publish,
    *,
    owner: str,
    full_refresh: bool = False,
    holder: str | None = None,
) -> FetchResult:
    """Stage every record changed since the watermark, page by page, and publish new rows.

    Each page is staged and the watermark checkpointed in one transaction, before any task for
    it is published: a crash at any point loses nothing, and a failed publish only delays rows
    that the reconciler will republish. ``full_refresh`` reads everything from the beginning and
    stages every record again, so the sink rewrites each row once (by key: no duplicates).
    The run holds a short lease (``IHUB_FETCH_LEASE_TTL``) that its heartbeat keeps, and ends
    within its budget (``fetch.max_pages``, ``fetch.max_seconds``) with ``more`` set.
    """
    url = hub.database_url
    state = integrations.load(url, name)
    if state.status == IntegrationStatus.REAUTH_REQUIRED:
        if not hub.has_new_credentials(name):
            return FetchResult("paused")
        resume(hub, name, publish)  # a new refresh token in the config: try it
    lease = FetchLease(url, name, owner, hub.settings.fetch_lease_ttl, holder=holder)
    if not lease.acquire():
        return FetchResult("busy")
    run_id = runs.start(url, name)
    try:
        result = _fetch_pages(hub, name, publish, run_id, lease, full_refresh)
    except ReauthRequired as exc:
        integrations.pause_for_reauth(url, name, exc.reason)
        runs.finish(url, run_id, status="paused", error=str(exc))
        log.warning("%s: paused, re-authorisation required: %s", name, exc.reason)
        return FetchResult("paused", run_id)
    except LeaseLost as exc:
        runs.finish(url, run_id, status="lease_lost", error=str(exc))
        log.warning("%s", exc)
        return FetchResult("lease_lost", run_id)
    except Exception as exc:
        error = redact(f"{type(exc).__name__}: {exc}")[:2000]
        runs.finish(url, run_id, status="failed", error=error)
        integrations.mark_fetch(url, name, success=False)
        raise
    finally:
        lease.release()
    runs.finish(url, run_id, status=result.status)
    integrations.mark_fetch(url, name, success=result.status == "ok")
    return result


@dataclass
class _Tally:
    pages: int = 0
    fetched: int = 0
    staged: int = 0
    unpublished: int = 0

    def result(
        self, status: str, run_id: int, mark: Watermark | None, trusted: bool, more: bool = False
    ) -> FetchResult:
        counts = (self.pages, self.fetched, self.staged, self.unpublished)
        return FetchResult(status, run_id, *counts, watermark=mark, trusted=trusted, more=more)


def _fetch_pages(
    hub: Hub,
    name: str,
    publish: Publish,
    run_id: int,
    lease: FetchLease,
    full_refresh: bool = False,
) -> FetchResult:
    """Stage the tombstone listing (if any), then the pages, moving the watermark with them.

    On a listing ordered by updated the watermark moves page by page to the last (updated, id)
    staged, so a fetch killed midway resumes from there; on any other listing it moves once the
    pass has ended, and only when the paginator trusts the pass (offset and page paging check
    that the source did not shift under them). It never passes the instant the fetch started
    (``delta.settle``), and tombstones never move it. A spent budget ends an ordered listing
    after its last checkpoint, with ``more`` set. Tombstones come first, from the same bound:
    a run cut short by its budget has read every deletion up to its start, so the next run,
    from a later watermark, misses none.
    """
    config, url, source = hub.integration(name), hub.database_url, hub.source(name)
    ceiling = utcnow().replace(tzinfo=UTC)  # changes from now on are read again next time
    watermark = integrations.watermark(url, name)
    since = lower_bound(watermark, timedelta(seconds=config.source.delta.lookback))
    since = None if full_refresh else since
    stored = integrations.resume_point(url, name)
    fresh = full_refresh or source.ordered  # an ordered listing resumes from its watermark
    carried = None if fresh else Continuation.from_json(stored, watermark)
    if carried is not None:  # an unordered pass a budget cut: same bounds, go on
        since, ceiling = carried.since, carried.until
    run = plan_run(config.fetch, lease, until=ceiling, time_limit=hub.settings.fetch_time_limit)
    tally, seen, trusted = _Tally(), carried.seen if carried else watermark, True
    for page in source.deletion_pages(since, run.bounds):  # first: tombstones never move it
        staged = _stage_page(
            hub, name, run_id, page, watermark, watermark, tally, publish, False, lease.owner
        )
        if not staged:
            return tally.result("lost_race", run_id, watermark, trusted)
        lease.renewed()
        if not page.last and run.spent(tally.pages):  # read again from the same bound next run
            return tally.result("ok", run_id, watermark, trusted)
    state = carried.state if carried else None
    for page in source.pages(since, run.bounds, state):
        seen = advance(seen, page.records)
        movable = (source.ordered and page.checkpoint) or (page.last and page.trusted)
        moved = settle(watermark, seen, ceiling) if movable else watermark
        staged = _stage_page(
            hub, name, run_id, page, watermark, moved, tally, publish, full_refresh, lease.owner
        )
        if not staged:
            return tally.result("lost_race", run_id, watermark, trusted)
        lease.renewed()
        watermark, trusted = moved, page.trusted
        if not page.last and run.spent(tally.pages):
            cut = Continuation(watermark, since, ceiling, seen, trusted, page.resume or {})
            more = _cut(hub, name, source, page, cut)
            return tally.result("ok", run_id, watermark, trusted, more=more)
    if stored is not None:
        integrations.set_resume_point(url, name, None)
    if not trusted:
        log.warning("%s: the source changed while paging; the watermark stays for a re-read", name)
    return tally.result("ok", run_id, watermark, trusted)


def _cut(hub: Hub, name: str, source: RestSource, page: Page, cut: Continuation) -> bool:
    """A run's budget ended the pass here: whether the next run goes on from here. An ordered
    listing has checkpointed the watermark; an unordered one keeps where its paginator
    stopped (when it can say), for the next run to take the pass up."""
    if source.ordered:
        return page.checkpoint
    if page.resume is None:
        return False
    integrations.set_resume_point(hub.database_url, name, cut.to_json())
    return True


def _stage_page(
    hub: Hub,
    name: str,
    run_id: int,
    page: Page,
    watermark: Watermark | None,
    moved: Watermark | None,
    tally: _Tally,
    publish: Publish,
    force: bool,
    owner: str | None = None,
) -> bool:
    """One transaction: stage the page, move the watermark (compare-and-set), renew the lease
    (``LeaseLost`` rolls all of it back); then publish. False when another fetch moved the
    watermark first."""
    with session_scope(hub.database_url) as session:
        due_in = hub.settings.reconcile_after
        options = {"force": True} if force else {}
        new_ids = queue.stage(session, name, run_id, page.records, due_in=due_in, **options)
        for reject in page.rejects:
            queue.stage_dead(session, name, run_id, reject.record_id, reject.payload, reject.reason)
        point = checkpoint.Checkpoint(
            name,
            run_id,
            fetched=len(page.records) + len(page.rejects),
            staged=len(new_ids),
            old=watermark,
            new=moved,
            lease=lease_name(name),
            owner=owner,
            ttl=hub.settings.fetch_lease_ttl,
        )
        outcome = checkpoint.write(session, point)
        if outcome == "lost_race":
            session.rollback()
            return False
        if outcome == "lease_lost":
            raise LeaseLost(name)
    tally.pages, tally.fetched = tally.pages + 1, tally.fetched + len(page.records)
    tally.staged += len(new_ids)
    tally.unpublished += publish_safely(publish, new_ids, name)
    return True


def publish_safely(publish: Publish, row_ids: list[int], name: str) -> int:
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


def resume(hub: Hub, name: str, publish: Publish) -> int:
    """Un-pause an integration and send the records that waited; how many were sent."""
    integrations.resume(hub.database_url, name)
    hub.forget_pause_state(name)
    waiting = queue.reopen(hub.database_url, name, due_in=hub.settings.reconcile_after)
    publish_safely(publish, waiting, name)
    return len(waiting)
