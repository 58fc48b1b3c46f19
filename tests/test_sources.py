"""Declarative sources end to end in one process: RestSource against the demo source (or a
recording transport), staging, the watermark and the SQL sink on SQLite (Postgres where noted).

The risk of offset and page paging over a changing source is shown, then shown handled; ties on
1-second timestamps are neither skipped nor looped on; deletions reach the sink.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import inspect, select, text

from ihub.cli import main
from ihub.demo.source import DemoSource, DemoSourceOptions
from models import integrations, queue
from models.db import get_engine, session_scope
from models.schema import RecordStatus, StagedRecord
from pipeline import fetch as fetch_engine
from pipeline import sync
from pipeline.config import SourceConfig, parse_config
from pipeline.delta import DELETED_KEY, Watermark
from pipeline.errors import ConfigError, PermanentError, TransientError
from pipeline.hub import Hub
from pipeline.settings import settings_from_env
from pipeline.sinks.sql import DELETED_COLUMN, SqlSink
from pipeline.sources.ratelimit import RedisRateLimiter, redis_client
from pipeline.sources.rest import RestSource

NAME = "items"
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def demo() -> Iterator[DemoSource]:
    source = DemoSource(DemoSourceOptions(require_auth=False, page_size_max=1000)).start()
    source.freeze_clock(T0)
    yield source
    source.stop()


def make_hub(url: str, home: Path, demo: DemoSource, **fields: Any) -> Hub:
    body = {
        "source": {"url": demo.records_url, "records": "data", "auth": {"type": "none"}, **fields},
        "sink": {"table": "target"},
        "retry": {"max_retries": 0, "backoff": 0},
        "fetch": {"page_backoff": 0},
    }
    config = parse_config({"integrations": {NAME: body}}, file="t", env={})
    hub = Hub(settings_from_env({"IHUB_DATABASE_URL": url, "IHUB_HOME": str(home)}), config)
    clock = lambda: demo.now().replace(tzinfo=None)  # noqa: E731  one clock for source and engine
    sync.utcnow = fetch_engine.utcnow = clock
    return hub


@pytest.fixture(autouse=True)
def _restore_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync, "utcnow", sync.utcnow)
    monkeypatch.setattr(fetch_engine, "utcnow", fetch_engine.utcnow)


def delta(hub: Hub, *, between_pages: Any = None, full_refresh: bool = False) -> Any:
    """One fetch (``between_pages(n)`` runs after page n is staged), then every row processed."""
    if between_pages is not None:
        real = hub.source(NAME)

        class Hooked:
            ordered = real.ordered

            def pages(self, since: Any, run: Any = None, resume: Any = None) -> Iterator[Any]:
                for number, page in enumerate(real.pages(since, run, resume)):
                    yield page
                    between_pages(number)

            def deletion_pages(self, since: Any, run: Any = None) -> Any:
                return real.deletion_pages(since, run)

        hub.source = lambda name: Hooked()  # type: ignore[method-assign]
    try:
        result = sync.fetch_delta(
            hub, NAME, lambda ids: None, owner="test", full_refresh=full_refresh
        )
    finally:
        hub.__dict__.pop("source", None)
    with session_scope(hub.database_url) as session:
        pending = list(
            session.scalars(
                select(StagedRecord.id).where(StagedRecord.status == RecordStatus.PENDING)
            )
        )
    for row_id in pending:
        sync.process_record(hub, row_id)
    return result


def target(url: str) -> dict[str, int]:
    with get_engine(url).connect() as connection:
        return {r[0]: int(r[1]) for r in connection.execute(text("SELECT id, version FROM target"))}


def live(demo: DemoSource) -> dict[str, int]:
    return {rid: int(r["version"]) for rid, r in demo.snapshot().items()}


def staged_count(url: str) -> int:
    with session_scope(url) as session:
        return len(list(session.scalars(select(StagedRecord.id))))


def spread(demo: DemoSource, n: int, step: float = 1.0) -> None:
    for _ in range(n):
        demo.insert()
        demo.advance_clock(step)


# --- offset and page paging over a changing source -----------------------------------------


def _bump_first_three(demo: DemoSource) -> Any:
    def bump(number: int) -> None:
        if number == 1:  # after the second page: three rows already read change and move
            for record_id in ("REC000001", "REC000002", "REC000003"):
                demo.update(record_id, state="moved")

    return bump


def test_plain_offset_paging_skips_a_row_when_the_source_changes(
    sqlite_url: str, tmp_path: Path, demo: DemoSource
) -> None:
    """The risk: with no overlap, rows changing behind the offset make one row lost for good."""
    spread(demo, 8)
    demo.advance_clock(60)
    hub = make_hub(
        sqlite_url,
        tmp_path,
        demo,
        ordered=True,
        pagination={"type": "offset", "limit": 2, "overlap": 0},
    )
    delta(hub, between_pages=_bump_first_three(demo))
    delta(hub)
    assert target(sqlite_url) != live(demo)
    assert set(live(demo)) - set(target(sqlite_url)), "a row was skipped for good"


@pytest.mark.parametrize(
    "pagination",
    [
        {"type": "offset", "limit": 2, "overlap": 1},
        {"type": "page", "limit": 2, "total_header": "X-Total-Count"},
    ],
    ids=["offset_overlap", "page_numbers"],
)
def test_offset_and_page_paging_detect_the_shift_and_the_next_delta_recovers(
    sqlite_url: str, tmp_path: Path, demo: DemoSource, pagination: dict[str, Any]
) -> None:
    """By default the shift is detected, the watermark holds, and the next delta recovers."""
    spread(demo, 8)
    demo.advance_clock(60)
    hub = make_hub(sqlite_url, tmp_path, demo, ordered=True, pagination=pagination)
    first = delta(hub, between_pages=_bump_first_three(demo))
    assert not first.trusted
    assert first.watermark is None or first.watermark.updated < T0 + timedelta(seconds=8)
    second = delta(hub)
    assert second.trusted and target(sqlite_url) == live(demo)


# --- many records sharing one timestamp ----------------------------------------------------


@pytest.mark.parametrize(
    "pagination",
    [
        {"type": "keyset", "limit": 10, "id_param": "after_id"},
        {"type": "keyset", "limit": 10, "offset_param": "offset"},
        {"type": "keyset", "limit": 10, "max_limit": 40},
        {"type": "cursor", "limit": 10},
    ],
    ids=["keyset_after_id", "keyset_tie_offset", "keyset_grow", "cursor"],
)
def test_records_sharing_one_second_are_read_once_each(
    sqlite_url: str, tmp_path: Path, demo: DemoSource, pagination: dict[str, Any]
) -> None:
    """25 records of one second over pages of 10: each staged once, none looped on."""
    for _ in range(25):
        demo.insert()
    hub = make_hub(sqlite_url, tmp_path, demo, pagination=pagination, delta={"lookback": 1})
    first = delta(hub)
    assert first.status == "ok" and staged_count(sqlite_url) == 25
    assert first.watermark == Watermark(T0, "")  # capped at the fetch's start: T0 is re-read
    demo.update("REC000003", state="later, same second")
    demo.advance_clock(5)
    delta(hub)
    assert target(sqlite_url) == live(demo) and staged_count(sqlite_url) == 26


def test_keyset_without_a_way_past_a_full_second_fails_instead_of_looping(
    sqlite_url: str, tmp_path: Path, demo: DemoSource
) -> None:
    """A keyset with no way past a full second fails with advice instead of looping."""
    for _ in range(25):
        demo.insert()
    hub = make_hub(sqlite_url, tmp_path, demo, pagination={"type": "keyset", "limit": 10})
    with pytest.raises(PermanentError, match="share the timestamp"):
        delta(hub)
    assert len(demo.requests) == 2


# --- deletions -----------------------------------------------------------------------------


def test_sink_delete_keeps_a_tombstone_that_an_older_write_cannot_pass(db_url: str) -> None:
    """delete removes the row; an older write cannot bring it back, a newer one can."""
    sink = SqlSink(db_url, "target", "id")
    assert sink.upsert({"id": "a", "n": 1}, "v1", deletes="delete")
    assert sink.delete("a", "v2", action="delete") is True
    assert sink.upsert({"id": "a", "n": 1}, "v1", deletes="delete") is False
    assert sink.count() == 0
    assert sink.delete("never-seen", "v2", action="delete") is False
    assert sink.upsert({"id": "a", "n": 3}, "v3", deletes="delete") is True
    with get_engine(db_url).connect() as connection:
        assert connection.execute(text("SELECT n FROM target")).scalar_one() == 3


def test_sink_mark_keeps_the_row_flagged_and_guarded_by_version(db_url: str) -> None:
    """mark flags the row and keeps it; only a newer version unmarks it."""
    sink = SqlSink(db_url, "target", "id")
    sink.upsert({"id": "a", "name": "x"}, "v1", deletes="mark")
    assert sink.delete("a", "v2", action="mark") is True
    assert sink.upsert({"id": "a", "name": "old"}, "v1", deletes="mark") is False

    def row() -> tuple[Any, ...]:
        with get_engine(db_url).connect() as connection:
            query = f'SELECT name, "{DELETED_COLUMN}" FROM target'
            return tuple(connection.execute(text(query)).one())

    assert row() in {("x", True), ("x", 1)}
    sink.upsert({"id": "a", "name": "new"}, "v3", deletes="mark")
    assert row() in {("new", False), ("new", 0)}


def test_a_deleted_flag_in_the_records_marks_the_target_row(
    sqlite_url: str, tmp_path: Path
) -> None:
    """With deletes.field, a record the source flags deleted is marked in the target."""
    demo = DemoSource(DemoSourceOptions(require_auth=False, soft_delete=True)).start()
    try:
        demo.freeze_clock(T0)
        spread(demo, 3)
        hub = make_hub(sqlite_url, tmp_path, demo, deletes={"field": "deleted"})
        delta(hub)
        demo.delete("REC000002")
        delta(hub)
    finally:
        demo.stop()
    with get_engine(sqlite_url).connect() as connection:
        rows = connection.execute(text(f'SELECT id, "{DELETED_COLUMN}" FROM target ORDER BY id'))
        assert [(r[0], bool(r[1])) for r in rows] == [
            ("REC000001", False),
            ("REC000002", True),
            ("REC000003", False),
        ]


def test_a_tombstone_listing_deletes_target_rows(
    sqlite_url: str, tmp_path: Path, demo: DemoSource
) -> None:
    """deletes.endpoint is read after each delta; its records are staged as deletions."""
    spread(demo, 4)
    endpoint = {"url": demo.url + "/api/deleted", "records": "data"}
    hub = make_hub(sqlite_url, tmp_path, demo, deletes={"endpoint": endpoint, "action": "delete"})
    delta(hub)
    demo.delete("REC000001")
    demo.delete("REC000004")
    result = delta(hub)
    assert result.staged == 2 and target(sqlite_url) == live(demo)
    with session_scope(sqlite_url) as session:
        payloads = [json.loads(p) for p in session.scalars(select(StagedRecord.payload))]
    assert sum(1 for p in payloads if p.get(DELETED_KEY) is True) == 2


# --- checkpoints, full refresh, the watermark command --------------------------------------


def test_a_fetch_failing_midway_resumes_from_its_last_checkpoint(
    sqlite_url: str, tmp_path: Path, demo: DemoSource
) -> None:
    """A 503 on page 3 that outlasts the page retries leaves the watermark at page 2, where the
    next fetch starts."""
    spread(demo, 10)
    demo.advance_clock(60)
    hub = make_hub(
        sqlite_url,
        tmp_path,
        demo,
        pagination={"type": "keyset", "limit": 3, "id_param": "after_id"},
        delta={"lookback": 0},
    )

    def fail_third(number: int) -> None:
        if number == 1:  # two pages staged: the third request and its 3 retries answer 503
            demo.fail_next("/api/records", 503, count=4)

    with pytest.raises(TransientError):
        delta(hub, between_pages=fail_third)
    mark = integrations.watermark(sqlite_url, NAME)
    assert mark == Watermark(T0 + timedelta(seconds=5), "REC000006")
    demo.requests.clear()
    delta(hub)
    first = demo.requests[0][3]
    assert first["updated_since"] == "2024-05-01T12:00:05Z" and "after_id" not in first
    assert target(sqlite_url) == live(demo) and staged_count(sqlite_url) == 10


def test_full_refresh_rewrites_every_row_once(
    sqlite_url: str, tmp_path: Path, demo: DemoSource
) -> None:
    """A full refresh rewrites every target row once, without duplicates."""
    spread(demo, 5)
    hub = make_hub(sqlite_url, tmp_path, demo)
    delta(hub)
    before = _sink_versions(sqlite_url)
    result = delta(hub, full_refresh=True)
    after = _sink_versions(sqlite_url)
    assert result.staged == 5 and staged_count(sqlite_url) == 10
    assert set(after) == set(before) and all(after[k] > before[k] for k in before)
    assert target(sqlite_url) == live(demo)
    assert delta(hub).staged == 0


def _sink_versions(url: str) -> dict[str, str]:
    with get_engine(url).connect() as connection:
        return dict(connection.execute(text("SELECT id, _ihub_version FROM target")).all())


def test_watermark_show_and_reset(
    sqlite_url: str, tmp_path: Path, demo: DemoSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """watermark show, reset --to (a backfill) and reset (a full load)."""
    spread(demo, 3)
    config = tmp_path / "integrations.yaml"
    source = {"url": demo.records_url, "records": "data", "auth": {"type": "none"}}
    config.write_text(
        json.dumps({"integrations": {NAME: {"source": source, "sink": {"table": "t"}}}})
    )
    monkeypatch.setenv("IHUB_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("IHUB_CONFIG", str(config))
    monkeypatch.setenv("IHUB_HOME", str(tmp_path))
    delta(make_hub(sqlite_url, tmp_path, demo))
    runner = CliRunner()
    shown = json.loads(runner.invoke(main, ["watermark", "show", NAME, "--json"]).output)
    assert shown["watermark"] == {"updated": "2024-05-01T12:00:02.000000Z", "id": "REC000003"}
    assert shown["next_fetch_from"] == "2024-05-01T11:59:32.000000Z"
    assert shown["last_run"]["status"] == "ok"
    moved = runner.invoke(
        main, ["watermark", "reset", NAME, "--to", "2024-04-30 08:00:00", "--yes"]
    )
    assert moved.exit_code == 0 and "was: 2024-05-01T12:00:02.000000Z" in moved.output
    assert integrations.watermark(sqlite_url, NAME) == Watermark(
        datetime(2024, 4, 30, 8, tzinfo=UTC), ""
    )
    cleared = runner.invoke(main, ["watermark", "reset", NAME, "--yes"])
    assert "none (next fetch: full load)" in cleared.output
    assert integrations.watermark(sqlite_url, NAME) is None
    bad = runner.invoke(main, ["watermark", "reset", NAME, "--to", "yesterday"])
    assert bad.exit_code == 2 and "expected an ISO time" in bad.output
    unknown = runner.invoke(main, ["watermark", "show", "nope"])
    assert unknown.exit_code == 2 and "no integration named 'nope'" in unknown.output


# --- requests: what goes out, what comes back ----------------------------------------------


class Recorder(requests.adapters.BaseAdapter):
    """A transport that records each request and answers with the next canned body."""

    def __init__(self, *bodies: Any) -> None:
        super().__init__()
        self.sent: list[tuple[requests.PreparedRequest, dict[str, Any]]] = []
        self.bodies = list(bodies)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.sent.append((request, kwargs))
        response = requests.Response()
        response.status_code, response.url, response.request = 200, request.url or "", request
        response._content = json.dumps(self.bodies.pop(0)).encode()
        response.headers["Content-Type"] = "application/json"
        return response

    def close(self) -> None:
        pass


def recorded_source(*bodies: Any, **fields: Any) -> tuple[RestSource, Recorder]:
    config = SourceConfig.model_validate({"url": "https://api.example.com/v1/items", **fields})
    source, recorder = RestSource(NAME, config), Recorder(*bodies)
    source.session.mount("https://", recorder)
    return source, recorder


def test_static_params_headers_and_timeout_are_sent() -> None:
    """Static parameters and headers go out with every request, with the configured timeout."""
    source, recorder = recorded_source(
        {"result": []},
        records="result",
        params={"sysparm_display_value": "false"},
        headers={"Accept": "application/json", "X-Tenant": "acme"},
        timeout=7,
        pagination={"type": "none"},
    )
    assert list(source.pages(T0)) and len(recorder.sent) == 1
    request, kwargs = recorder.sent[0]
    assert "sysparm_display_value=false" in (request.url or "")
    assert "updated_since=2024-05-01T12%3A00%3A00Z" in (request.url or "")
    assert request.headers["X-Tenant"] == "acme" and kwargs["timeout"] == 7


@pytest.mark.parametrize(
    ("fields", "item", "expected"),
    [
        ({"updated_format": "datetime"}, {"t": "2024-05-01 14:00:00"}, T0 + timedelta(hours=2)),
        (
            {"updated_format": "datetime", "delta": {"timezone": "Europe/Berlin"}},
            {"t": "2024-05-01 14:00:00"},
            T0,
        ),
        ({}, {"t": "2024-05-01T12:00:00.123456789Z"}, T0 + timedelta(microseconds=123456)),
        ({}, {"t": "2024-05-01T14:00:00+02:00"}, T0),
        ({"updated_format": "epoch"}, {"t": 1714564800}, T0),
        ({"updated_format": "epoch_ms"}, {"t": "1714564800500"}, T0 + timedelta(milliseconds=500)),
    ],
    ids=[
        "servicenow_utc",
        "servicenow_berlin",
        "iso_nanoseconds",
        "iso_offset",
        "epoch",
        "epoch_ms",
    ],
)
def test_updated_field_formats(fields: dict, item: dict, expected: datetime) -> None:
    """Each timestamp format of the updated field (naive values in delta.timezone)."""
    source, _ = recorded_source(updated="meta.t", **fields)
    record = source.parse({"id": 7, "meta": item})
    assert record.updated == expected and record.id == "7"


def test_a_record_without_an_id_or_timestamp_is_rejected_with_its_key() -> None:
    """Unparseable records become dead letters named by the id path when there is one."""
    source, _ = recorded_source(
        {
            "data": [
                {"key": {"id": "x1"}},
                {"key": {"id": "x2"}, "updated_at": "2024-05-01T12:00:00Z"},
            ]
        },
        records="data",
        id="key.id",
        pagination={"type": "none"},
    )
    [page] = list(source.pages(None))
    assert [r.id for r in page.records] == ["x2"]
    [reject] = page.rejects
    assert reject.record_id == "x1" and "updated_at" in reject.reason


def test_a_listing_declared_ordered_that_is_not_fails_loudly() -> None:
    """ordered: true promises a sort by updated; a page that breaks it is an error."""
    rows = [
        {"id": "b", "updated_at": "2024-05-01T12:00:05Z"},
        {"id": "a", "updated_at": "2024-05-01T12:00:00Z"},
    ]
    source, _ = recorded_source(rows, ordered=True, pagination={"type": "none"})
    with pytest.raises(PermanentError, match="declared ordered"):
        list(source.pages(None))


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"pagination": {"type": "keyset"}, "delta": {"param": None}}, "keyset pagination needs"),
        ({"body": {"q": 1}}, "'body' needs method: POST"),
        ({"pagination": {"type": "offset", "cursor_path": "x"}}, "cursor_path: unknown key"),
        ({"pagination": {"type": "sideways"}}, "pagination"),
        ({"pagination": {"type": "offset", "limit": 5, "overlap": 5}}, "overlap must be smaller"),
        ({"deletes": {"action": "delete"}}, "set 'field'"),
        ({"rate_limit": 0}, "rate_limit"),
    ],
    ids=["keyset_without_bound", "body_without_post", "key_of_another_style", "unknown_style",
         "overlap_too_large", "deletes_without_signal", "rate_limit_zero"],
)  # fmt: skip
def test_source_config_mistakes_are_named(fields: dict, problem: str) -> None:
    """Every source-side mistake is a config error that names the key."""
    raw = {
        "integrations": {"s": {"source": {"url": "https://x/i", **fields}, "sink": {"table": "t"}}}
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, file="f.yaml", env={})
    assert any(problem in p for p in caught.value.problems), caught.value.problems


# --- the rate limit, shared by every process -----------------------------------------------


def _acquire_many(url: str, count: int, results: Any) -> None:
    limiter = RedisRateLimiter(lambda: redis_client(url), "ihub:ratelimit:test", rate=20)
    stamps = []
    for _ in range(count):
        limiter.acquire()
        stamps.append(time.time())
    results.put(stamps)


def test_rate_limit_is_shared_by_every_process(redis_url: str) -> None:
    """Three processes at a shared 20/s: any 10 consecutive sends span about 0.5 s."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [
        context.Process(target=_acquire_many, args=(redis_url, 8, results)) for _ in range(3)
    ]
    for process in workers:
        process.start()
    stamps = sorted(s for _ in workers for s in results.get(timeout=60))
    for process in workers:
        process.join(timeout=30)
    assert len(stamps) == 24
    assert all(later - first >= 0.4 for first, later in zip(stamps, stamps[10:], strict=False))


def test_rate_limiter_waits_for_its_slot_and_survives_no_redis() -> None:
    """acquire() sleeps what the script says; a Redis that cannot be reached is transient."""

    class Script:
        def __init__(self) -> None:
            self.calls = 0

        def __call__(self, keys: list[str], args: list[int]) -> int:
            self.calls += 1
            return 0 if self.calls == 1 else 250_000

    class Client:
        def register_script(self, source: str) -> Script:
            assert "redis.call('TIME')" in source
            return Script()

    slept: list[float] = []
    limiter = RedisRateLimiter(Client, "k", rate=4, sleep=slept.append)
    assert (limiter.acquire(), limiter.acquire()) == (0, 0.25) and slept == [0.25]
    assert (limiter.interval_us, limiter.tolerance_us) == (250_000, 0)
    broken = RedisRateLimiter(lambda: redis_client("redis://127.0.0.1:1/0"), "k", rate=1)
    with pytest.raises(TransientError, match="rate limiter unavailable"):
        broken.acquire()


def test_tables_are_only_those_the_sink_needs(
    sqlite_url: str, tmp_path: Path, demo: DemoSource
) -> None:
    """Without deletes, the sink adds neither a tombstone table nor a deleted column."""
    spread(demo, 2)
    delta(make_hub(sqlite_url, tmp_path, demo))
    names = set(inspect(get_engine(sqlite_url)).get_table_names())
    assert "target" in names and "_ihub_tombstones" not in names
    columns = {c["name"] for c in inspect(get_engine(sqlite_url)).get_columns("target")}
    assert DELETED_COLUMN not in columns
    assert queue.counts(sqlite_url, NAME)["done"] == 2
