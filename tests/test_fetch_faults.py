"""Faults on the fetch side, in one process (SQLite, Postgres where a page's checkpoint is
one statement, and the demo source): page-level retries in
place, a lease that dies with its holder and fences off a run that lost it, every run bounded
by its start instant and its budget, and the broker-loss marker."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from sqlalchemy import select, update

from ihub.demo.source import DemoSource, DemoSourceOptions
from ihub.report import collect_status, render_text
from models import integrations, leases, runs
from models.db import session_scope
from models.schema import IntegrationState, Lease, StagedRecord
from pipeline import fetch as fetch_engine
from pipeline import sync
from pipeline.config import parse_config
from pipeline.delta import Watermark
from pipeline.hub import Hub
from pipeline.lease import FetchLease, lease_name
from pipeline.settings import settings_from_env
from pipeline.sources.placement import build_request
from tests.chaostools import wait_until

NAME = "items"
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
KEYSET = {"type": "keyset", "limit": 2, "id_param": "after_id"}


@pytest.fixture
def demo() -> Iterator[DemoSource]:
    source = DemoSource(DemoSourceOptions(require_auth=False, page_size_max=1000)).start()
    source.freeze_clock(T0)
    yield source
    source.stop()


@pytest.fixture(autouse=True)
def _restore_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync, "utcnow", sync.utcnow)
    monkeypatch.setattr(fetch_engine, "utcnow", fetch_engine.utcnow)


def make_hub(url: str, home: Path, demo: DemoSource, fetch: Any = None, **source: Any) -> Hub:
    body = {
        "source": {
            "url": demo.records_url,
            "records": "data",
            "auth": {"type": "none"},
            "delta": {"lookback": 0},
            **source,
        },
        "sink": {"table": "target"},
        "fetch": {"page_backoff": 0.01, **(fetch or {})},
    }
    config = parse_config({"integrations": {NAME: body}}, file="t", env={})
    hub = Hub(settings_from_env({"IHUB_DATABASE_URL": url, "IHUB_HOME": str(home)}), config)
    clock = lambda: demo.now().replace(tzinfo=None)  # noqa: E731  one clock for source and engine
    sync.utcnow = fetch_engine.utcnow = clock
    return hub


def spread(demo: DemoSource, n: int) -> None:
    for _ in range(n):
        demo.insert()
        demo.advance_clock(1)


def fetch(hub: Hub, owner: str = "test") -> sync.FetchResult:
    return sync.fetch_delta(hub, NAME, lambda ids: None, owner=owner)


def after_page(hub: Hub, number: int, action: Any) -> None:
    """Run ``action`` once the source has answered ``number`` record pages."""
    answered = []

    def hook(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if response.ok:
            answered.append(response.url)
            if len(answered) == number:
                action()

    hub.source(NAME).session.hooks["response"].append(hook)


def staged_ids(url: str) -> list[str]:
    with session_scope(url) as session:
        return list(session.scalars(select(StagedRecord.record_id).order_by(StagedRecord.id)))


def record_requests(demo: DemoSource) -> list[dict[str, Any]]:
    return [params for _at, _m, path, params in demo.requests if path == "/api/records"]


# --- page-level retries ---------------------------------------------------------------------


def test_page_3_of_5_answering_502_twice_is_retried_in_place(
    sqlite_url: str, tmp_path: Path, demo: DemoSource
) -> None:
    """Page 3 of 5 answers 502 twice then 200: one run stages all records, no page is read
    twice (no restart from page 1)."""
    spread(demo, 9)
    demo.advance_clock(60)
    hub = make_hub(sqlite_url, tmp_path, demo, pagination=KEYSET)
    after_page(hub, 2, lambda: demo.fail_next("/api/records", 502, count=2))
    result = fetch(hub)
    assert (result.status, result.pages, result.staged, result.more) == ("ok", 5, 9, False)
    assert demo.counters["injected_failures"] == 2
    sent = [(p.get("updated_since"), p.get("after_id")) for p in record_requests(demo)]
    assert len(sent) == 5 == len(set(sent)), sent
    assert [r["status"] for r in [runs.latest(sqlite_url, NAME)]] == ["ok"]


def test_a_page_failing_past_its_retries_fails_the_run_and_the_next_resumes(
    sqlite_url: str, tmp_path: Path, demo: DemoSource
) -> None:
    """429s that outlast the retries fail the run after page 2; the next run starts at the
    page-2 checkpoint, not at page 1."""
    from pipeline.errors import TransientError

    spread(demo, 10)
    demo.advance_clock(60)
    hub = make_hub(sqlite_url, tmp_path, demo, fetch={"page_retries": 2}, pagination=KEYSET)
    after_page(hub, 2, lambda: demo.fail_next("/api/records", 429, count=3, retry_after="0"))
    with pytest.raises(TransientError, match="429"):
        fetch(hub)
    assert integrations.watermark(sqlite_url, NAME) == Watermark(
        T0 + timedelta(seconds=3), "REC000004"
    )
    demo.requests.clear()
    assert fetch(hub).status == "ok"
    first = record_requests(demo)[0]
    assert first["updated_since"] == "2024-05-01T12:00:03Z" and "after_id" not in first
    assert sorted(staged_ids(sqlite_url)) == [f"REC{n:06d}" for n in range(1, 11)]


# --- the lease -----------------------------------------------------------------------------


def test_a_run_that_lost_its_lease_stops_without_moving_the_watermark(
    db_url: str, tmp_path: Path, demo: DemoSource
) -> None:
    """Another owner takes the lease over after page 1: the run stops at its next checkpoint,
    that page is not staged and the watermark stays at page 1."""
    spread(demo, 6)
    demo.advance_clock(60)
    hub = make_hub(db_url, tmp_path, demo, pagination=KEYSET)

    def steal() -> None:
        with session_scope(db_url) as session:
            session.execute(update(Lease).values(owner="thief"))

    after_page(hub, 2, steal)
    result = fetch(hub)
    assert result.status == "lease_lost"
    assert runs.latest(db_url, NAME)["status"] == "lease_lost"
    assert integrations.watermark(db_url, NAME) == Watermark(T0 + timedelta(seconds=1), "REC000002")
    assert staged_ids(db_url) == ["REC000001", "REC000002"]
    assert leases.current(db_url, lease_name(NAME)).owner == "thief"


def test_a_run_whose_watermark_another_fetch_moved_stops_and_stages_nothing_more(
    db_url: str, tmp_path: Path, demo: DemoSource
) -> None:
    """The watermark moved under the run after its first page (an operator's reset, a fetch
    that raced it): the compare-and-set of page 2 fails, so page 2 is not staged, the run's
    counters keep page 1 only, and the watermark is the one the other set (PITFALLS 27)."""
    spread(demo, 6)
    demo.advance_clock(60)
    hub = make_hub(db_url, tmp_path, demo, pagination=KEYSET)
    elsewhere = Watermark(T0 + timedelta(seconds=4), "REC000005")
    after_page(hub, 2, lambda: integrations.set_watermark(db_url, NAME, elsewhere))
    result = fetch(hub)
    assert result.status == "lost_race" and result.pages == 1
    assert staged_ids(db_url) == ["REC000001", "REC000002"]
    assert integrations.watermark(db_url, NAME) == elsewhere
    run = runs.latest(db_url, NAME)
    assert (run["pages"], run["fetched"], run["staged"]) == (1, 2, 2)


def test_each_page_renews_the_lease_and_counts_into_its_run(
    db_url: str, tmp_path: Path, demo: DemoSource
) -> None:
    """Three pages of two: the run counts every page, 6 fetched and 6 staged, the watermark is
    the last record, and pages 1 and 2's checkpoints renewed the lease: it was renewed later
    when page 3 was answered than when page 1 was. The watermark's moves stamp its row's
    ``updated_at``, as an ORM update does."""
    spread(demo, 6)
    demo.advance_clock(60)
    hub = make_hub(db_url, tmp_path, demo, pagination=KEYSET)
    renewals: list[datetime | None] = []
    stamps: list[datetime] = []

    def look() -> None:
        with session_scope(db_url) as session:
            renewals.append(session.get(Lease, lease_name(NAME)).renewed_at)
            stamps.append(session.get(IntegrationState, NAME).updated_at)

    after_page(hub, 1, look)
    after_page(hub, 3, look)
    result = fetch(hub)
    assert result.status == "ok" and result.pages >= 3
    run = runs.latest(db_url, NAME)
    assert (run["fetched"], run["staged"]) == (6, 6) and run["pages"] == result.pages
    assert integrations.watermark(db_url, NAME) == Watermark(T0 + timedelta(seconds=5), "REC000006")
    first, third = renewals
    assert first is not None and third is not None and third > first
    assert stamps[1] > stamps[0], "page 2's watermark move left updated_at as it was"


def test_a_lease_frees_itself_one_ttl_after_its_last_heartbeat(sqlite_url: str) -> None:
    """A holder that stops renewing (killed) loses the lease after its TTL; until then the
    integration is busy for everyone else."""
    name = lease_name("x")
    assert leases.acquire(sqlite_url, name, "killed", ttl=0.5, holder="w1 pid 1 task killed")
    assert not leases.acquire(sqlite_url, name, "next", ttl=60)
    wait_until(
        lambda: leases.acquire(sqlite_url, name, "next", ttl=60),
        timeout=10,
        interval=0.1,
        what="the lease of a holder that stopped renewing to expire",
    )
    assert leases.current(sqlite_url, name).owner == "next"


def test_waiting_renews_the_lease_at_least_every_third_of_its_ttl(sqlite_url: str) -> None:
    """A 30 s Retry-After with a 6 s TTL: slept in slices of at most 2 s, each followed by a
    renewal, so the lease never lapses while its run waits."""
    now = [1000.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    lease = FetchLease(sqlite_url, "x", "me", 6.0, clock=lambda: now[0], sleep=sleep)
    assert lease.acquire()
    renewals = []
    real_renew = leases.renew

    def counting(*args: Any, **kwargs: Any) -> bool:
        renewals.append(now[0])
        return real_renew(*args, **kwargs)

    leases.renew, restore = counting, real_renew  # type: ignore[assignment]
    try:
        lease.wait(30.0)
    finally:
        leases.renew = restore  # type: ignore[assignment]
    assert sum(slept) == pytest.approx(30.0) and max(slept) <= 2.0
    gaps = [b - a for a, b in zip([1000.0, *renewals], renewals, strict=False)]
    assert len(renewals) == 15 and max(gaps) <= 2.0


# --- every run ends ---------------------------------------------------------------------------


def test_an_ordered_listing_stops_at_the_first_record_updated_after_the_run_started(
    sqlite_url: str, tmp_path: Path, demo: DemoSource
) -> None:
    """Records changed while a run pages move past its start instant: that run stops at the
    first of them, and the next run reads them."""
    spread(demo, 6)
    demo.advance_clock(60)
    hub = make_hub(sqlite_url, tmp_path, demo, pagination=KEYSET)

    def change_during_the_run() -> None:
        demo.advance_clock(5)
        for record_id in ("REC000001", "REC000002", "REC000003", "REC000004"):
            demo.update(record_id, state="moved")

    after_page(hub, 1, change_during_the_run)
    first = fetch(hub)
    assert (first.status, first.more) == ("ok", False)
    assert first.fetched == 4  # REC1-2 on page 1, then REC5-6; the moved four are past `until`
    second = fetch(hub)
    assert second.staged == 4  # the new versions of REC1-4
    assert sorted(set(staged_ids(sqlite_url))) == [f"REC{n:06d}" for n in range(1, 7)]


def test_the_budget_ends_a_run_with_more_to_read_and_the_next_goes_on(
    sqlite_url: str, tmp_path: Path, demo: DemoSource
) -> None:
    """A backfill of 9 records, 2 a page, with a budget of 2 pages: three bounded runs, each
    going on from the last checkpoint (re-reading only the boundary record), the first two
    saying more; every record staged once."""
    spread(demo, 9)
    demo.advance_clock(60)
    hub = make_hub(sqlite_url, tmp_path, demo, fetch={"max_pages": 2}, pagination=KEYSET)
    results = [fetch(hub), fetch(hub), fetch(hub)]
    assert [(r.status, r.pages, r.more) for r in results] == [
        ("ok", 2, True),
        ("ok", 2, True),
        ("ok", 2, False),
    ]
    assert sorted(staged_ids(sqlite_url)) == [f"REC{n:06d}" for n in range(1, 10)]
    assert len(record_requests(demo)) == 6


def test_an_unordered_backfill_goes_on_where_the_budget_cut_it(
    sqlite_url: str, tmp_path: Path, demo: DemoSource
) -> None:
    """Cursor paging over an unordered listing, 9 records, 2 a page, a budget of 2 pages: the
    next run takes the pass up at the cursor where the last one stopped (no page read twice);
    the watermark moves once, when the pass ends."""
    spread(demo, 9)
    demo.advance_clock(60)
    hub = make_hub(
        sqlite_url,
        tmp_path,
        demo,
        fetch={"max_pages": 2},
        pagination={"type": "cursor", "limit": 2},
    )
    results = [fetch(hub)]
    assert integrations.watermark(sqlite_url, NAME) is None
    results += [fetch(hub), fetch(hub)]
    assert [(r.pages, r.more) for r in results] == [(2, True), (2, True), (1, False)]
    sent = [p.get("cursor") for p in record_requests(demo)]
    assert len(sent) == 5 == len(set(sent)), sent
    assert sorted(staged_ids(sqlite_url)) == [f"REC{n:06d}" for n in range(1, 10)]
    assert integrations.watermark(sqlite_url, NAME) == Watermark(
        T0 + timedelta(seconds=8), "REC000009"
    )
    assert integrations.resume_point(sqlite_url, NAME) is None


def test_until_is_available_to_templates_and_bodies(tmp_path: Path, demo: DemoSource) -> None:
    """``{until}`` is the run's upper bound in the delta's format, in a template and a body."""
    config = (
        parse_config(
            {
                "integrations": {
                    "a": {
                        "source": {
                            "url": demo.records_url,
                            "method": "POST",
                            "body": {"q": "updated>={watermark}^updated<={until}", "to": "{until}"},
                            "delta": {"format": "epoch"},
                        },
                        "sink": {"table": "t"},
                    }
                }
            },
            file="t",
            env={},
        )
        .get("a")
        .source
    )
    request = build_request(config, (T0, ""), {}, until=T0 + timedelta(seconds=30))
    stamp = int(T0.timestamp())
    assert request.json == {"q": f"updated>={stamp}^updated<={stamp + 30}", "to": stamp + 30}


# --- status shows the holder ------------------------------------------------------------------


def test_status_shows_who_holds_the_fetch_and_since_when(sqlite_url: str) -> None:
    """While a fetch holds its lease, the report (status --json, /api/status, the text) names
    the worker, the task id and since when."""
    integrations.load(sqlite_url, NAME)
    leases.acquire(sqlite_url, lease_name(NAME), "task-42", 60, holder="w1@host pid 7 task task-42")
    report = collect_status(sqlite_url, None)
    [item] = report["integrations"]
    holder = item["fetch_holder"]
    assert holder["holder"] == "w1@host pid 7 task task-42" and holder["task_id"] == "task-42"
    assert holder["since"] and holder["expires_at"]
    assert any("fetching since" in line and "w1@host pid 7" in line for line in render_text(report))
    leases.release(sqlite_url, lease_name(NAME), "task-42")
    assert collect_status(sqlite_url, None)["integrations"][0]["fetch_holder"] is None


# --- broker loss --------------------------------------------------------------------------------


def test_after_a_broker_loss_every_open_row_is_republished_at_once(
    sqlite_url: str, tmp_path: Path, demo: DemoSource
) -> None:
    """Open rows not yet due wait for their deadline, unless the broker lost its state: then
    the reconciler republishes every one of them at once."""
    spread(demo, 5)
    hub = make_hub(sqlite_url, tmp_path, demo)
    assert fetch(hub).staged == 5
    sent: list[int] = []
    assert sync.reconcile(hub, sent.extend) == 0 and sent == []
    assert sync.reconcile(hub, sent.extend, broker_lost=True) == 5
    with session_scope(sqlite_url) as session:
        assert sorted(sent) == sorted(session.scalars(select(StagedRecord.id)))


def test_the_broker_marker_tells_a_flushed_broker_from_a_first_start(
    sqlite_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """First look: a start, not a loss; the marker then stays; after FLUSHDB (this test's own
    db) the next look reports the loss once."""
    import redis

    from tasks.maintenance import broker_lost

    conf = SimpleNamespace(broker_url=redis_url, broker_transport_options={})
    App: Any = SimpleNamespace(conf=conf)  # the part of a Celery app it reads

    looks = [broker_lost(App, sqlite_url), broker_lost(App, sqlite_url)]
    redis.Redis.from_url(redis_url).flushdb()
    looks += [broker_lost(App, sqlite_url), broker_lost(App, sqlite_url)]
    assert looks == [False, False, True, False]
