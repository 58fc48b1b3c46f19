"""The engine (no Celery) syncing a demo source into the ServiceNow-style target: deletions
from a tombstone listing reach it as DELETEs by sys_id, with the id map as the bridge."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ihub.demo.servicenow import ServiceNowOptions, ServiceNowTarget
from ihub.demo.source import DemoSource, DemoSourceOptions
from models import idmap
from models.db import session_scope
from models.schema import RecordStatus, StagedRecord
from pipeline import fetch as fetch_engine
from pipeline import sync
from pipeline.config import parse_config
from pipeline.hub import Hub
from pipeline.settings import settings_from_env

T0 = datetime(2026, 3, 1, 12, 0, 0)


@pytest.fixture
def demo() -> DemoSource:
    source = DemoSource(DemoSourceOptions(require_auth=False)).start()
    source.freeze_clock(T0)
    yield source
    source.stop()


@pytest.fixture
def itsm() -> ServiceNowTarget:
    target = ServiceNowTarget(ServiceNowOptions(require_auth=False)).start()
    yield target
    target.stop()


def make_hub(url: str, home: Path, demo: DemoSource, itsm: ServiceNowTarget, **sink: Any) -> Hub:
    body = {
        "source": {
            "url": demo.records_url,
            "records": "data",
            "auth": {"type": "none"},
            "deletes": {"endpoint": {"url": demo.url + "/api/deleted", "records": "data"}},
        },
        "sink": {
            "type": "rest",
            "url": itsm.table_url("incident"),
            "version_field": None,
            "lookup": {"field": "correlation_id", "records": "result", "id": "sys_id"},
            **sink,
        },
        "retry": {"max_retries": 0, "backoff": 0},
    }
    config = parse_config({"integrations": {"itsm": body}}, file="t", env={})
    return Hub(settings_from_env({"IHUB_DATABASE_URL": url, "IHUB_HOME": str(home)}), config)


def sync_once(hub: Hub, demo: DemoSource, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = lambda: demo.now().replace(tzinfo=None)  # noqa: E731  one clock for source and engine
    monkeypatch.setattr(sync, "utcnow", clock)
    monkeypatch.setattr(fetch_engine, "utcnow", clock)
    sync.fetch_delta(hub, "itsm", lambda ids: None, owner="test")
    with session_scope(hub.database_url) as session:
        pending = list(
            session.scalars(
                select(StagedRecord.id).where(StagedRecord.status == RecordStatus.PENDING)
            )
        )
    for row_id in pending:
        assert sync.process_record(hub, row_id).status == "done"


def spread(demo: DemoSource, n: int) -> None:
    for _ in range(n):
        demo.insert()
        demo.advance_clock(1.0)


def test_source_deletions_delete_target_records_by_sys_id(
    sqlite_url: str, tmp_path: Path, demo: DemoSource, itsm: ServiceNowTarget, monkeypatch
) -> None:
    """Records deleted at the source are DELETEd on the target by the sys_id the id map holds;
    the others stay, each once."""
    spread(demo, 4)
    hub = make_hub(sqlite_url, tmp_path, demo, itsm)
    sync_once(hub, demo, monkeypatch)
    assert sorted(itsm.by_field("incident")) == sorted(demo.snapshot())
    demo.delete("REC000002")
    demo.advance_clock(1.0)
    sync_once(hub, demo, monkeypatch)
    assert sorted(itsm.by_field("incident")) == ["REC000001", "REC000003", "REC000004"]
    assert itsm.counters["deletes"] == 1
    assert idmap.show(sqlite_url, "itsm", "REC000002")["state"] == "deleted"


def test_source_deletions_as_a_state_change_close_the_target_record(
    sqlite_url: str, tmp_path: Path, demo: DemoSource, itsm: ServiceNowTarget, monkeypatch
) -> None:
    """With deletes: {method: PATCH, body: {state: "7"}} the record stays, closed."""
    spread(demo, 2)
    deletes = {"method": "PATCH", "body": {"state": "7"}}
    hub = make_hub(sqlite_url, tmp_path, demo, itsm, deletes=deletes)
    sync_once(hub, demo, monkeypatch)
    demo.delete("REC000001")
    demo.advance_clock(1.0)
    sync_once(hub, demo, monkeypatch)
    states = {k: v[0]["state"] for k, v in itsm.by_field("incident").items()}
    assert states == {"REC000001": "7", "REC000002": "new"}


def test_sink_rate_limit_is_one_redis_key_for_every_worker(
    sqlite_url: str, tmp_path: Path, demo: DemoSource, itsm: ServiceNowTarget
) -> None:
    """sink.rate_limit gives the sink a limiter on the broker's Redis under a key of its own
    (``ihub:ratelimit:NAME:sink``), apart from the source's, so all workers share one rate."""
    from pipeline.sources.ratelimit import RedisRateLimiter

    hub = make_hub(sqlite_url, tmp_path, demo, itsm, rate_limit=20, rate_burst=2)
    limiter = hub.sink("itsm").limiter
    assert isinstance(limiter, RedisRateLimiter)
    assert limiter.key == "ihub:ratelimit:itsm:sink" and limiter.interval_us == 50_000
