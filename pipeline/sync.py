"""The two steps of a sync, free of Celery: fetch a delta (``pipeline.fetch``, re-exported
here), and process one staged record; plus the reconciler and the redrive policy.

The tasks in ``tasks/`` call these and turn their outcome into a retry; tests and the
benchmarks can call them directly.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from models import deadletters, finishing, integrations, peek, queue
from models.redaction import redact
from pipeline import transform
from pipeline.delta import is_deletion
from pipeline.errors import PermanentError, ReauthRequired, TransientError
from pipeline.fetch import FetchResult as FetchResult
from pipeline.fetch import Publish
from pipeline.fetch import fetch_delta as fetch_delta
from pipeline.fetch import resume as resume
from pipeline.hub import Hub
from pipeline.retry import backoff_seconds
from pipeline.sinks import RestSink, SqlSink
from pipeline.sinks.sql import Then
from pipeline.spool import Spool, SpooledDeath, is_database_outage
from pipeline.timefmt import utcnow

log = logging.getLogger(__name__)

MAX_CRASH_REDELIVERIES = 3
EVERY_DEADLINE = 10 * 365 * 86400.0  # "overdue by minus ten years": every open row
BROKER_LOSS_LIMIT = 50_000  # rows republished at once after a broker loss; more wait deadlines


@dataclass(frozen=True)
class Outcome:
    status: str  # done | retry | dead | skipped | paused
    countdown: float = 0.0
    error: BaseException | None = None


@dataclass(frozen=True)
class Delivery:
    """Who is processing: the task id, whether the broker redelivered it, where to spool."""

    worker: str | None = None
    token: str | None = None
    redelivered: bool = True
    spool: Spool | None = None


def process_record(
    hub: Hub, row_id: int, *, worker: str | None = None, delivery: Delivery | None = None
) -> Outcome:
    """Write one staged record to its sink, and record what happened.

    A database outage raises (``pipeline.spool.is_database_outage``): the task retries, and
    nothing half-written remains, as every state change is one transaction. Only a dead letter
    is not retried that way: its verdict goes to the spool when ``delivery.spool`` is given.
    """
    url = hub.database_url
    delivery = delivery or Delivery(worker=worker)
    deadline = hub.settings.process_time_limit + 30
    finished = _claim_and_write(hub, row_id, delivery, deadline)
    if isinstance(finished, Outcome):
        return finished
    claim, failure = finished
    if claim is None:
        return Outcome("skipped")
    if claim.crash_redeliveries > MAX_CRASH_REDELIVERIES:
        message = (
            f"the worker processing this record was lost {claim.crash_redeliveries} "
            "times (killed, out of memory, or cut off from the broker)"
        )
        _bury(url, row_id, delivery, "WorkerLost", message, None)
        return Outcome("dead")
    # The cached flag may be stale right after a resume: confirm before handing the row back.
    if hub.paused(claim.integration) and integrations.is_paused(url, claim.integration):
        queue.release(url, row_id, due_in=hub.settings.reconcile_after)
        return Outcome("paused")
    started = time.perf_counter()
    try:
        if failure is not None:
            raise failure
        _write(hub, claim)
    except ReauthRequired as exc:
        # The target refused our credential: the record waits, its retry budget untouched.
        integrations.pause_for_reauth(url, claim.integration, exc.reason)
        hub.forget_pause_state(claim.integration)
        queue.release(url, row_id, due_in=hub.settings.reconcile_after)
        log.warning("%s: paused, re-authorisation required: %s", claim.integration, exc.reason)
        return Outcome("paused", error=exc)
    except TransientError as exc:
        return _retry_or_die(hub, claim, exc, delivery)
    except Exception as exc:
        if type(exc).__name__ == "SoftTimeLimitExceeded":  # Celery's, raised into the sink call
            slow = TransientError(f"sink {claim.integration}: the soft time limit was reached")
            return _retry_or_die(hub, claim, slow, delivery)
        _dead(url, row_id, exc, delivery)
        return Outcome("dead", error=exc)
    queue.mark_done(url, row_id, (time.perf_counter() - started) * 1000)
    return Outcome("done")


def _claim_and_write(
    hub: Hub, row_id: int, delivery: Delivery, deadline: float
) -> Outcome | tuple[queue.Claim | None, Exception | None]:
    """Write the record and mark it done in one transaction, sent as one query string, when
    its sink is a table of this Postgres database; otherwise, or when that write fails,
    claim the row and hand the caller (the claim, the write's error).

    A first delivery reads the row (``models.peek``) and its done mark counts the attempt:
    two round trips and one write of the row for the common case (bench/stages.py counts
    them). A redelivery, or a row not waiting, takes the written claim first, which commits
    on its own: a worker lost before its write completed leaves the row processing with its
    delivery counted, so a record that kills its worker every time is dead-lettered after
    ``MAX_CRASH_REDELIVERIES`` instead of looping (its first, uncounted, delivery adds one).
    A write that reached the server commits with its done mark even if the worker dies
    meanwhile: the record is done, once. A write that fails is rolled back with its done mark.
    """
    started = time.perf_counter()
    failure: Exception | None = None
    if not delivery.redelivered and hub.reads_before_claiming():
        waiting = peek.peek_waiting(hub.database_url, row_id)
        if waiting is not None and _writes_in_transaction(hub, waiting):
            claimed = {"token": delivery.token, "started": utcnow()}
            failure = _write_then_done(hub, waiting, started, claim_here=claimed)
            if failure is None:
                return Outcome("done")
    claim = queue.claim(
        hub.database_url,
        row_id,
        deadline=deadline,
        token=delivery.token,
        redelivered=delivery.redelivered,
    )
    if claim is None:
        return Outcome("skipped")
    if failure is not None or not _writes_in_transaction(hub, claim):
        return claim, failure
    failure = _write_then_done(hub, claim, started)
    return Outcome("done") if failure is None else (claim, failure)


def _write_then_done(
    hub: Hub, claim: queue.Claim, started: float, *, claim_here: dict[str, Any] | None = None
) -> Exception | None:
    """The fused write (sink upsert and done mark, one query string); its error, if any. A
    database outage raises: the task retries it whole."""
    try:
        record = _prepare(hub, claim)
        # the time until the write is sent: the claim and the transform (the write's own
        # round trip is the one that records it)
        elapsed = (time.perf_counter() - started) * 1000
        _send(hub, claim, record, then=finishing.done_then(claim.row_id, elapsed, claim=claim_here))
    except Exception as exc:
        if is_database_outage(exc):
            raise
        return exc
    return None


def _writes_in_transaction(hub: Hub, claim: queue.Claim) -> bool:
    """Postgres only: SQLite's single writer would wait on itself when the sink creates its
    table from a second connection. Not for a record to bury or an integration paused."""
    return (
        hub.database_url.startswith("postgresql")
        and hub.sink_shares_database(claim.integration)
        and claim.crash_redeliveries <= MAX_CRASH_REDELIVERIES
        and not hub.paused(claim.integration)
    )


def _write(hub: Hub, claim: queue.Claim) -> None:
    """Transform the staged record and upsert it, or apply the deletion it stands for."""
    _send(hub, claim, _prepare(hub, claim))


def _prepare(hub: Hub, claim: queue.Claim) -> dict[str, Any] | None:
    """The record to upsert, transformed; None for a deletion."""
    if is_deletion(claim.payload):
        return None
    return transform.apply(hub.integration(claim.integration), claim.record_id, claim.payload)


def _send(
    hub: Hub,
    claim: queue.Claim,
    record: dict[str, Any] | None,
    *,
    then: Then | None = None,
) -> None:
    """Upsert ``record``, or apply the deletion (None) the claim stands for; ``then`` (a
    statement of a SQL sink's own database) commits with the write."""
    integration = hub.integration(claim.integration)
    sink = hub.sink(claim.integration)
    version = queue.sink_version(claim.version, claim.row_id)
    action = integration.source.deletes.action if integration.source.deletes else None
    if record is None:
        if isinstance(sink, SqlSink):
            sink.delete(claim.record_id, version, action=action or "mark", then=then)
        elif isinstance(sink, RestSink):
            sink.delete(claim.record_id, version, action=action or "mark")
        else:
            raise PermanentError(f"sink of {claim.integration}: this sink takes no deletions")
        return
    if isinstance(sink, SqlSink):
        sink.upsert(record, version, deletes=action, then=then)
    else:
        sink.upsert(record, version)


def _retry_or_die(hub: Hub, claim: queue.Claim, exc: TransientError, delivery: Delivery) -> Outcome:
    policy = hub.integration(claim.integration).retry
    if claim.attempts > policy.max_retries:
        _dead(hub.database_url, claim.row_id, exc, delivery)
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


def _dead(url: str, row_id: int, exc: BaseException, delivery: Delivery) -> None:
    trace = "".join(traceback.format_exception(exc))
    _bury(url, row_id, delivery, type(exc).__name__, str(exc)[:4000], trace)


def _bury(
    url: str,
    row_id: int,
    delivery: Delivery,
    error_class: str,
    message: str,
    trace: str | None,
) -> None:
    """Dead-letter the row; with the database out, spool the verdict instead (exactly one
    letter either way: the replay and any later death upsert the same row)."""
    message, trace = redact(message), redact(trace) if trace else None
    death = SpooledDeath(row_id, delivery.token, error_class, message, trace, delivery.worker)
    try:
        bury_spooled(url, death)
    except Exception as exc:
        if delivery.spool is None or not is_database_outage(exc):
            raise
        where = delivery.spool.put(death)
        log.warning("row %d: database unavailable, dead letter spooled to %s", row_id, where)


def bury_spooled(url: str, death: SpooledDeath) -> bool:
    """Write one dead letter; False when the row was finished or taken over meanwhile."""
    return queue.mark_dead(
        url,
        death.row_id,
        error_class=death.error_class,
        message=death.message,
        traceback=death.traceback,
        worker=death.worker,
        expect_token=death.token,
    )


def redrive(hub: Hub, name: str, publish: Publish) -> deadletters.Requeued:
    """Requeue what the integration's redrive policy allows (beat runs it; off by default)."""
    policy = hub.integration(name).redrive
    if not policy.enabled:
        return deadletters.Requeued()
    selection = deadletters.Selection(
        integration=name,
        reasons=tuple(policy.reasons),
        requeued_fewer_than=policy.max_requeues,
    )
    return deadletters.requeue(
        hub.database_url,
        selection,
        actor=f"redrive policy of {name}",
        action="redrive",
        publish=publish,
        rate=policy.rate,
        due_in=hub.settings.reconcile_after,
    )


def reconcile(
    hub: Hub,
    publish: Publish,
    spool: Spool | None = None,
    *,
    queue_depth: int | None = None,
    broker_lost: bool = False,
) -> int:
    """Write the spooled dead letters, then republish open rows past their deadline; the count
    republished.

    ``queue_depth``: messages waiting in the process queue. While some wait, a pending row past
    its deadline is most likely among them rather than lost, so rows that a worker held
    (processing, retrying) are republished, and pending ones once the queue has drained or
    when they are overdue by ten deadlines (a backlog that never drains loses no row either).
    ``broker_lost``: the broker lost its state, so every pending or retrying row is republished
    now, deadline or not; a processing row keeps its claim's deadline (its holder may be alive
    and finish it; if it died, the ordinary path republishes it then).
    """
    if spool is not None:
        spool.drain(lambda death: bury_spooled(hub.database_url, death))
    url, grace = hub.database_url, hub.settings.reconcile_after
    paused = integrations.paused_names(url)
    if broker_lost:
        log.warning("the broker lost its state: republishing every open row")
        lost = (queue.S.PENDING, queue.S.RETRYING)  # a processing row's claim has its deadline
        ids = queue.republish_due(
            url,
            grace=grace,
            skip=paused,
            statuses=lost,
            overdue=-EVERY_DEADLINE,
            limit=BROKER_LOSS_LIMIT,
        )
    elif not queue_depth:
        ids = queue.republish_due(url, grace=grace, skip=paused)
    else:
        held = (queue.S.PROCESSING, queue.S.RETRYING)
        ids = queue.republish_due(url, grace=grace, skip=paused, statuses=held)
        ids += queue.republish_due(
            url, grace=grace, skip=paused, statuses=(queue.S.PENDING,), overdue=10 * grace
        )
    for start in range(0, len(ids), 500):
        publish(ids[start : start + 500])
    return len(ids)
