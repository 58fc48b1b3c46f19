"""The status page and JSON API over real HTTP on 127.0.0.1, against a known SQLite database."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import timedelta
from html import escape
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from redis.backoff import NoBackoff
from redis.retry import Retry

from ihub.web import ServerHandle, serve
from models import migrate
from models.db import session_scope
from models.schema import (
    DeadLetter,
    FetchRun,
    IntegrationState,
    IntegrationStatus,
    RecordStatus,
    StagedRecord,
)
from pipeline.timefmt import utcnow
from tasks.broker import embedded_broker_url, redis_client

TIMEOUT = 5
NASTY = "<script>alert('x')</script> & more"
NASTY_ID = "<img src=x onerror=alert(1)>"
REASON = "refresh token revoked <b>by admin</b>"
# crm: one row per status (plus one more pending); erp: only in the queue, no state row.
CRM_ROWS = {"pending": 2, "processing": 1, "retrying": 1, "done": 3, "dead": 1}


def record(integration: str, record_id: str, status: str, payload: Any) -> StagedRecord:
    return StagedRecord(
        integration=integration,
        record_id=record_id,
        version="v1",
        digest="",
        payload=json.dumps(payload),
        status=status,
        attempts=1,
        deliveries=0,
    )


@pytest.fixture
def db(tmp_path: Path) -> tuple[str, int]:
    """A migrated database with known rows; returns (url, row id of the dead record)."""
    url = f"sqlite:///{tmp_path}/t.db"
    migrate.upgrade(url)
    now = utcnow()
    with session_scope(url) as session:
        records = [
            record("crm", f"{status}-{i}", status, {"n": i})
            for status, n in CRM_ROWS.items()
            if status != "dead"
            for i in range(n)
        ]
        dead = record("crm", NASTY_ID, RecordStatus.DEAD, {"name": "Ada", "note": "</pre><script>"})
        erp = record("erp", "e1", RecordStatus.PENDING, {})
        session.add_all([*records, dead, erp])
        session.flush()
        session.add(
            DeadLetter(
                record_row_id=dead.id,
                integration="crm",
                record_id=NASTY_ID,
                version="v1",
                error_class="ValueError",
                message=NASTY,
                traceback="Traceback (most recent call last):\n  boom",
                attempts=5,
                worker="w1",
            )
        )
        session.add(
            IntegrationState(
                name="crm",
                status=IntegrationStatus.REAUTH_REQUIRED,
                status_reason=REASON,
                watermark_updated="2024-01-02T03:04:05.000000Z",
                watermark_id="42",
                last_fetch_at=now,
                last_success_at=now - timedelta(minutes=5),
            )
        )
        session.add(FetchRun(integration="crm", status="succeeded", pages=1, fetched=8, staged=8))
        dead_id = dead.id
    return url, dead_id


@pytest.fixture
def server(db: tuple[str, int]) -> Iterator[ServerHandle]:
    handle = serve(db[0], None, port=0, flower_url="http://127.0.0.1:5555/")
    yield handle
    handle.stop()


def get(server: ServerHandle, path: str, **params: Any) -> requests.Response:
    with requests.get(server.url + path, params=params, timeout=TIMEOUT) as response:
        return response  # not streamed: the body is already read


def test_api_status_counts_exact(server: ServerHandle) -> None:
    """Per-integration and total counts match the inserted rows exactly."""
    body = get(server, "/api/status").json()
    by_name = {item["name"]: item for item in body["integrations"]}
    assert by_name["crm"]["counts"] == CRM_ROWS
    assert by_name["erp"]["counts"] == {
        "pending": 1,
        "processing": 0,
        "retrying": 0,
        "done": 0,
        "dead": 0,
    }
    assert body["totals"] == {**CRM_ROWS, "pending": CRM_ROWS["pending"] + 1}
    assert body["generated_at"].endswith("Z")


def test_api_status_paused_state_and_watermark(server: ServerHandle) -> None:
    """The re-authorisation pause, its reason, the watermark and the last run are reported."""
    crm = next(i for i in get(server, "/api/status").json()["integrations"] if i["name"] == "crm")
    assert crm["status"] == "reauth_required"
    assert crm["status_reason"] == REASON
    assert crm["watermark"] == {"updated": "2024-01-02T03:04:05.000000Z", "id": "42"}
    assert crm["last_success_at"].endswith("Z")
    assert crm["last_run"]["status"] == "succeeded"
    assert crm["last_run"]["staged"] == 8


def test_integration_without_state_row_appears(server: ServerHandle) -> None:
    """An integration with queued rows but no state row is listed, active, without a run."""
    erp = next(i for i in get(server, "/api/status").json()["integrations"] if i["name"] == "erp")
    assert erp["status"] == "active"
    assert erp["watermark"] == {"updated": None, "id": None}
    assert erp["last_run"] is None


def test_queues_null_without_broker(server: ServerHandle) -> None:
    """With no broker URL the API reports queues as null and the page says unavailable."""
    assert get(server, "/api/status").json()["queues"] is None
    assert "unavailable" in get(server, "/").text


def test_queues_unavailable_when_broker_unreachable(db: tuple[str, int], tmp_path: Path) -> None:
    """An unreachable broker yields null queues rather than an error."""
    handle = serve(db[0], f"redis+socket://{tmp_path}/missing.sock", port=0)
    try:
        response = get(handle, "/api/status")
        assert response.status_code == 200
        assert response.json()["queues"] is None
    finally:
        handle.stop()


def test_queue_depths_from_real_redis(db: tuple[str, int], tmp_path: Path) -> None:
    """Queue depth is the LLEN of each Celery list on a real (embedded) redis-server."""
    broker_url = embedded_broker_url(tmp_path / "redis")
    client = redis_client(broker_url)
    client.set_retry(Retry(NoBackoff(), 0))  # stop_embedded's retried SHUTDOWN takes seconds
    handle = serve(db[0], broker_url, port=0)
    try:
        client.rpush("ihub.process", "a", "b", "c")
        client.rpush("ihub.fetch", "f")
        assert get(handle, "/api/status").json()["queues"] == {"ihub.fetch": 1, "ihub.process": 3}
        assert "ihub.process: 3" in get(handle, "/").text
    finally:
        handle.stop()
        with contextlib.suppress(redis.ConnectionError):  # it hangs up as it exits
            client.shutdown(nosave=True)
        client.close()


def test_api_dead_lists_dead_letter(server: ServerHandle, db: tuple[str, int]) -> None:
    """/api/dead returns the dead letter, filters by integration and honours limit."""
    dead = get(server, "/api/dead").json()
    assert [(d["row_id"], d["record_id"], d["message"]) for d in dead] == [(db[1], NASTY_ID, NASTY)]
    assert get(server, "/api/dead", integration="erp").json() == []
    assert len(get(server, "/api/dead", integration="crm", limit=1).json()) == 1
    assert get(server, "/api/dead", limit="lots").status_code == 400


def test_index_escapes_third_party_text(server: ServerHandle, db: tuple[str, int]) -> None:
    """The HTML page shows the data escaped: no raw <script> or <img> from a source."""
    response = get(server, "/")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    html = response.text
    assert "<script" not in html and "<img" not in html and "<b>by admin" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert escape(REASON) in html
    assert f'href="/dead/{db[1]}"' in html
    assert 'http-equiv="refresh" content="5"' in html
    assert 'href="http://127.0.0.1:5555/"' in html
    assert "re-authorisation required" in html


def test_dead_detail_shows_payload_and_traceback(server: ServerHandle, db: tuple[str, int]) -> None:
    """/dead/<id> shows the pretty payload and the traceback, escaped."""
    response = get(server, f"/dead/{db[1]}")
    assert response.status_code == 200
    html = response.text
    assert "&quot;name&quot;: &quot;Ada&quot;" in html
    assert "&lt;/pre&gt;&lt;script&gt;" in html and "<script" not in html
    assert "Traceback (most recent call last):" in html


@pytest.mark.parametrize("path", ["/nope", "/dead/999999", "/dead/abc", "/api", "/dead/"])
def test_unknown_paths_404(server: ServerHandle, path: str) -> None:
    """Unknown paths and unknown dead-letter ids answer 404."""
    assert get(server, path).status_code == 404


def test_healthz_and_method(server: ServerHandle) -> None:
    """/healthz answers ok; a POST is refused."""
    assert get(server, "/healthz").text == "ok"
    with requests.post(server.url + "/healthz", timeout=TIMEOUT) as response:
        assert response.status_code == 405
