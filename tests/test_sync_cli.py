"""``ihub sync``: it waits behind a running fetch, and every expected failure is one line (or
one JSON document with --json) and a documented exit code, never a traceback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from ihub.cli import main
from ihub.cli.syncing import BUSY, OPEN, REFUSED, UNAVAILABLE
from ihub.demo.source import DemoSource, DemoSourceOptions
from models import leases
from pipeline import sync
from pipeline.hub import Hub
from pipeline.lease import lease_name

NAME = "items"


@pytest.fixture
def demo() -> Iterator[DemoSource]:
    source = DemoSource(DemoSourceOptions(page_size_max=1000)).start()
    source.seed(12)
    yield source
    source.stop()


def configure(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    db: str,
    broker: str,
    demo: DemoSource,
    **auth: str,
) -> None:
    source = {
        "url": demo.records_url,
        "records": "data",
        "auth": {
            "type": "oauth2",
            "token_url": demo.token_url,
            "client_id": "demo-client",
            "client_secret": "demo-secret",
            **auth,
        },
        "pagination": {"type": "keyset", "id_param": "after_id", "limit": 5},
    }
    body = {"source": source, "sink": {"table": "target"}, "fetch": {"page_backoff": 0.01}}
    config = tmp_path / "integrations.yaml"
    config.write_text(yaml.safe_dump({"integrations": {NAME: body}}))
    env = {
        "IHUB_CONFIG": str(config),
        "IHUB_DATABASE_URL": db,
        "IHUB_BROKER_URL": broker,
        "IHUB_HOME": str(tmp_path / "home"),
        "IHUB_SECRET_KEY": "test-secret-key-0123456789-abcdefghijklmnop",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from tasks import app as app_module

    monkeypatch.setattr(app_module, "_app", None)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["sync", NAME, *args])


def one_line_failure(result: Result, code: int, status: str) -> None:
    assert result.exit_code == code, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {status}: ")
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_busy_past_the_timeout_is_one_line_exit_3_and_names_the_holder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str, redis_url: str, demo
) -> None:
    """Another fetch holds the lease: exit 3, one line; --json says who holds it since when."""
    configure(monkeypatch, tmp_path, sqlite_url, redis_url, demo)
    leases.acquire(sqlite_url, lease_name(NAME), "task-9", 60, holder="w9@h pid 9 task task-9")
    one_line_failure(invoke(), BUSY, "busy")
    document = json.loads(invoke("--json").stdout)
    assert (document["status"], document["exit_code"]) == ("busy", BUSY)
    assert document["holder"]["task_id"] == "task-9" and document["holder"]["since"]
    waited = invoke("--wait", "--timeout", "1", "--json")
    assert waited.exit_code == BUSY and json.loads(waited.stdout)["status"] == "busy"


def test_wait_runs_right_after_the_running_fetch_and_until_its_records_are_done(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str, redis_url: str, demo
) -> None:
    """--wait behind a running fetch: it runs once that one releases the lease, then blocks
    until every record of its run is done (processed here by a stand-in for the workers)."""
    configure(monkeypatch, tmp_path, sqlite_url, redis_url, demo)
    leases.acquire(sqlite_url, lease_name(NAME), "running", 60, holder="w1 pid 1 task running")
    hub, stop = Hub.from_env(), threading.Event()

    def workers() -> None:
        stop.wait(1.0)
        leases.release(sqlite_url, lease_name(NAME), "running")
        while not stop.wait(0.1):
            for row_id in _pending(sqlite_url):
                sync.process_record(hub, row_id)

    helper = threading.Thread(target=workers, daemon=True)
    helper.start()
    try:
        result = invoke("--wait", "--timeout", "60", "--json")
    finally:
        stop.set()
        helper.join(timeout=10)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["status"] == "ok" and document["staged"] == 12
    assert document["counts"]["done"] == 12


def _pending(url: str) -> list[int]:
    from sqlalchemy import select

    from models.db import session_scope
    from models.schema import RecordStatus, StagedRecord

    with session_scope(url) as session:
        query = select(StagedRecord.id).where(StagedRecord.status == RecordStatus.PENDING)
        return list(session.scalars(query))


def test_records_still_open_at_the_timeout_exit_6(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str, redis_url: str, demo
) -> None:
    """--wait with no worker to process the records: exit 6 at --timeout, one line."""
    configure(monkeypatch, tmp_path, sqlite_url, redis_url, demo)
    one_line_failure(invoke("--wait", "--timeout", "1"), OPEN, "open")


def test_a_source_that_is_down_exits_4_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str, redis_url: str, demo
) -> None:
    """The source refuses connections: exit 4, one line (the JSON names the error)."""
    configure(monkeypatch, tmp_path, sqlite_url, redis_url, demo)
    demo.stop()
    one_line_failure(invoke(), UNAVAILABLE, "unavailable")
    document = json.loads(invoke("--json").stdout)
    assert document["exit_code"] == UNAVAILABLE and "Connection" in document["error"]


def test_429_past_the_page_retries_exits_4_with_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str, redis_url: str, demo
) -> None:
    """A 429 on every try: the page is retried in place, then exit 4 with a JSON document."""
    configure(monkeypatch, tmp_path, sqlite_url, redis_url, demo)
    demo.fail_next("/api/records", 429, count=4, retry_after="0", body="slow down")
    result = invoke("--json")
    document = json.loads(result.stdout)
    assert result.exit_code == UNAVAILABLE and "429" in document["error"]
    assert demo.counters["injected_failures"] == 4


def test_a_refused_credential_exits_5_and_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str, redis_url: str, demo
) -> None:
    """The token endpoint refuses the client: exit 5, one line, the integration paused."""
    configure(monkeypatch, tmp_path, sqlite_url, redis_url, demo, client_secret="wrong")
    result = invoke()
    one_line_failure(result, REFUSED, "paused")
    assert "credential refused" in result.stderr and "wrong" not in result.output
