"""Every JSON endpoint over real HTTP, against known rows on SQLite and on Postgres.

The server's clock is pinned to tests.web_seed.NOW (2024-05-11 12:00 UTC) and the process runs
under a far-off local time zone, so "today" can only be right if it is computed in UTC.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests

from ihub.web.server import ServerHandle, serve
from models import migrate
from tests import web_seed
from tests.web_seed import NOW

TIMEOUT = 10


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, dict[str, int]]:
    """A migrated database of the given backend holding the web_seed rows."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/api.db"
        migrate.upgrade(url)
    else:
        url = request.getfixturevalue("pg_url")
    return url, web_seed.seed(url)


@pytest.fixture
def far_timezone() -> Iterator[None]:
    """Local time UTC+14 (it is already 2024-05-12 there at NOW): UTC must not depend on it."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Pacific/Kiritimati"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


@pytest.fixture
def server(db: tuple[str, dict[str, int]], far_timezone: None) -> Iterator[ServerHandle]:
    handle = serve(db[0], None, port=0, clock=lambda: NOW)
    yield handle
    handle.stop()


def get(server: ServerHandle, path: str, **params: Any) -> Any:
    response = requests.get(server.url + path, params=params, timeout=TIMEOUT)
    assert response.status_code == 200, (path, response.status_code, response.text)
    assert response.headers["Content-Type"] == "application/json"
    return response.json()


def test_integrations_overview(server: ServerHandle) -> None:
    """State, last success and its age, watermark lag, token expiry and counts, per integration."""
    body = {i["name"]: i for i in get(server, "/api/integrations")}
    assert {name: i["counts"] for name, i in body.items()} == web_seed.COUNTS
    assert {name: i["state"] for name, i in body.items()} == {
        "crm": "running",
        "erp": "paused",
        "hr": "failing",
    }
    crm = body["crm"]
    assert crm["last_success_at"] == "2024-05-11T11:58:00Z"
    assert crm["last_success_age_seconds"] == 120.0
    assert crm["watermark"] == {"updated": "2024-05-11T11:55:00.000000Z", "id": "c19"}
    assert crm["watermark_lag_seconds"] == 300.0
    assert crm["last_run"]["status"] == "ok"
    assert crm["tokens"] == [
        {
            "credential": "crm:source",
            "expires_at": "2024-05-11T12:30:00Z",
            "expires_in_seconds": 1800.0,
            "refreshed_at": None,
            "refresh_count": 7,
            "failure_count": 1,
            "last_error": "invalid_grant",
        }
    ]
    assert body["erp"]["status_reason"] == "refresh token revoked"
    assert body["erp"]["tokens"] == [] and body["hr"]["watermark_lag_seconds"] is None


def test_success_rate_today_and_window(server: ServerHandle) -> None:
    """Done vs dead since UTC midnight (inclusive) and over 24 h and 1 h windows, exactly."""
    body = get(server, "/api/success-rate")
    assert body["today"] == {
        "since": "2024-05-11T00:00:00Z",
        **web_seed.TODAY,
        "rate": round(21 / 24, 6),
    }
    assert body["window"] == {
        "since": "2024-05-10T12:00:00Z",
        **web_seed.WINDOW_24H,
        "rate": round(26 / 30, 6),
        "hours": 24,
    }
    hour = get(server, "/api/success-rate", hours=1)["window"]
    # since 11:00: crm done 11:01..11:19 (19) + erp 11:59:30; crm dead 11:45
    assert (hour["done"], hour["dead"]) == (20, 1)


def test_processing_time_mean_and_p95(server: ServerHandle) -> None:
    """Mean and nearest-rank p95 of duration_ms, today and over the window, on both backends."""
    body = get(server, "/api/processing-time")
    assert body["today"] == {"since": "2024-05-11T00:00:00Z", **web_seed.PROCESSING_TODAY}
    assert body["window"] == {
        "since": "2024-05-10T12:00:00Z",
        "hours": 24,
        **web_seed.PROCESSING_24H,
    }


def test_throughput_per_minute(server: ServerHandle) -> None:
    """Every minute of the last 3 h is present; records land in the minute they finished."""
    body = get(server, "/api/throughput")
    minutes = body["per_minute"]
    assert body["since"] == "2024-05-11T09:00:00Z"
    assert len(minutes) == 181 and minutes[-1]["minute"] == "2024-05-11T12:00:00Z"
    busy = {m["minute"][11:16]: (m["done"], m["dead"]) for m in minutes if m["done"] or m["dead"]}
    expected = {f"11:{i:02d}": (1, 0) for i in range(1, 20)}
    expected |= {"09:30": (0, 1), "11:45": (0, 1), "11:59": (1, 0)}
    assert busy == expected
    assert len(get(server, "/api/throughput", hours=1)["per_minute"]) == 61


def test_errors_today(server: ServerHandle, db: tuple[str, dict[str, int]]) -> None:
    """Dead and retrying records that failed since UTC midnight, newest first, with the total."""
    body = get(server, "/api/errors")
    assert body["total"] == 3
    rows = [
        (e["at"], e["integration"], e["record_id"], e["status"], e["error_class"], e["attempts"])
        for e in body["items"]
    ]
    assert rows == [
        ("2024-05-11T11:50:00Z", "crm", "r1", "retrying", "TransientError", 2),
        ("2024-05-11T11:45:00Z", "crm", "d2", "dead", "ValueError", 5),
        ("2024-05-11T09:30:00Z", "crm", "d1", "dead", "PermanentError", 5),
    ]
    assert body["items"][1]["message"] == "bad date 'x'"
    assert body["items"][1]["row_id"] == db[1]["crm-dead-1145"]
    limited = get(server, "/api/errors", limit=1)
    assert limited["total"] == 3 and len(limited["items"]) == 1
    assert get(server, "/api/errors", integration="erp")["total"] == 0


def test_dead_letter_filters(server: ServerHandle, db: tuple[str, dict[str, int]]) -> None:
    """Filter by integration, error class and time (since inclusive, until exclusive), paged."""
    ids = db[1]

    def found(**params: Any) -> tuple[int, list[int]]:
        body = get(server, "/api/dead", **params)
        return body["total"], [d["row_id"] for d in body["items"]]

    newest_first = [ids["crm-dead-1145"], ids["crm-dead-0930"], ids["crm-dead-yday"]]
    assert found() == (4, [*newest_first, ids["erp-dead-old"]])  # the requeued one is not
    assert found(integration="crm") == (3, newest_first)
    assert found(error_class="PermanentError") == (
        3,
        [ids["crm-dead-0930"], ids["crm-dead-yday"], ids["erp-dead-old"]],
    )
    assert found(since="2024-05-11") == (2, newest_first[:2])
    assert found(since="2024-05-10T20:00", until="2024-05-11T09:30") == (1, [newest_first[2]])
    assert found(since="2024-05-11T13:30+02:00") == (1, [ids["crm-dead-1145"]])  # 11:30 UTC
    assert found(limit=1, offset=1) == (4, [ids["crm-dead-0930"]])
    item = get(server, "/api/dead", integration="crm", limit=1)["items"][0]
    assert item["last_failed_at"] == "2024-05-11T11:45:00Z" and item["attempts"] == 5


def test_dead_letter_detail_masks_secrets(
    server: ServerHandle, db: tuple[str, dict[str, int]], tmp_path: Any
) -> None:
    """/api/dead/<id>: payload keys that look secret are masked, and so are config secrets."""
    from ihub.report import register_config_secrets

    config = tmp_path / "integrations.yaml"
    config.write_text(
        "integrations:\n  crm:\n    schedule: 60\n    source:\n"
        "      url: http://127.0.0.1:9/api\n      auth:\n        type: oauth2\n"
        "        token_url: http://127.0.0.1:9/token\n        client_id: ihub\n"
        f"        client_secret: {web_seed.SECRET}\n"
        "    sink: {type: sql, table: crm, key: id}\n"
    )
    assert register_config_secrets(str(config)) >= 1
    body = get(server, f"/api/dead/{db[1]['crm-dead-1145']}")
    assert body["payload"] == {
        "id": "d2",
        "password": "********",
        "nested": {"api_key": "********"},
    }
    assert web_seed.SECRET not in body["traceback"] and "********" in body["traceback"]
    assert (body["error_class"], body["attempts"], body["status"]) == ("ValueError", 5, "dead")
    missing = requests.get(server.url + "/api/dead/999999", timeout=TIMEOUT)
    assert missing.status_code == 404


def test_status_is_every_widget_and_matches_the_cli(
    server: ServerHandle, db: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """/api/status holds each widget's figures, and `ihub status --json` prints the same."""
    from click.testing import CliRunner

    from ihub import cli

    body = get(server, "/api/status")
    assert body["success_rate"] == get(server, "/api/success-rate")
    assert body["processing_time"] == get(server, "/api/processing-time")
    assert body["errors_today"] == get(server, "/api/errors")
    assert body["throughput"] == get(server, "/api/throughput")
    assert body["integrations"] == get(server, "/api/integrations")
    assert body["totals"] == {"pending": 4, "processing": 1, "retrying": 2, "done": 26, "dead": 4}
    monkeypatch.setenv("IHUB_DATABASE_URL", db[0])
    monkeypatch.setenv("IHUB_BROKER_URL", "redis://127.0.0.1:1/0")  # unreachable: queues null
    monkeypatch.setattr("ihub.report.utcnow", lambda: NOW)
    result = CliRunner().invoke(cli.main, ["status", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == body
    text = CliRunner().invoke(cli.main, ["status"]).output
    assert "crm: running" in text and "today (UTC): done=21 dead=3 success=87.5%" in text


def test_queue_depths_from_the_broker(db: tuple[str, dict[str, int]], redis_url: str) -> None:
    """/api/queues is the LLEN of each Celery queue on the broker; null when it is down."""
    client = redis.Redis.from_url(redis_url)
    client.rpush("ihub.process", "a", "b", "c")
    client.rpush("ihub.fetch", "f")
    handle = serve(db[0], redis_url, port=0, clock=lambda: NOW)
    down = serve(db[0], "redis://127.0.0.1:1/0", port=0, clock=lambda: NOW)
    try:
        assert get(handle, "/api/queues") == {"ihub.fetch": 1, "ihub.process": 3}
        assert get(down, "/api/queues") is None
    finally:
        handle.stop()
        down.stop()
        client.close()


@pytest.mark.parametrize(
    "path", ["/api/success-rate?hours=0", "/api/throughput?hours=25", "/api/dead?since=yesterday"]
)
def test_bad_parameters_are_400(server: ServerHandle, path: str) -> None:
    """Out-of-range or unparsable parameters answer 400 with the reason, not 500."""
    response = requests.get(server.url + path, timeout=TIMEOUT)
    assert response.status_code == 400, response.text


def test_api_index_documents_every_endpoint(server: ServerHandle) -> None:
    """/api lists the endpoints, each answering 200 (the list is the documentation)."""
    endpoints = get(server, "/api")["endpoints"]
    for path in endpoints:
        if "<" in path or path == "/metrics":
            continue
        assert requests.get(server.url + path, timeout=TIMEOUT).status_code == 200, path
