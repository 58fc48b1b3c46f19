"""The retry path's bookkeeping, without workers: claim leases (no parallel run, crash
redeliveries counted), the dead-letter spool, classify hooks for errors in a 200 body."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import requests

from models import queue
from models.db import session_scope
from models.schema import StagedRecord
from pipeline import classify, sync
from pipeline.config import parse_config
from pipeline.delta import SourceRecord
from pipeline.errors import ConfigError, PermanentError, TransientError
from pipeline.hub import Hub
from pipeline.settings import settings_from_env
from pipeline.spool import Spool, SpooledDeath
from pipeline.timefmt import utcnow

T0 = datetime(2024, 5, 1, 12, 0, 0)


def stage(url: str, *ids: str) -> list[int]:
    records = [SourceRecord(i, T0, {"id": i}) for i in ids]
    with session_scope(url) as session:
        return queue.stage(session, "crm", None, records, due_in=300)


# --- claim leases ---------------------------------------------------------------------------


def test_claim_leaves_a_row_held_by_a_live_task_alone(sqlite_url: str) -> None:
    """Another task id during the lease gets nothing (no parallel run, no crash counted); our
    own retry takes the row back uncounted; a redelivery of the same message is a crash."""
    [row_id] = stage(sqlite_url, "a")
    first = queue.claim(sqlite_url, row_id, deadline=60, token="T1", redelivered=False)
    assert first is not None
    assert queue.claim(sqlite_url, row_id, deadline=60, token="T2", redelivered=False) is None
    assert queue.claim(sqlite_url, row_id, deadline=60, token="T2", redelivered=True) is None
    again = queue.claim(sqlite_url, row_id, deadline=60, token="T1", redelivered=False)
    assert again is not None and again.crash_redeliveries == 0
    crash = queue.claim(sqlite_url, row_id, deadline=60, token="T1", redelivered=True)
    assert crash is not None and crash.crash_redeliveries == 1


def test_claim_takes_over_after_the_lease_and_counts_it(sqlite_url: str) -> None:
    """Once the holder's lease ran out, any task takes the row and the loss is counted."""
    [row_id] = stage(sqlite_url, "a")
    assert queue.claim(sqlite_url, row_id, deadline=60, token="T1", redelivered=False)
    with session_scope(sqlite_url) as session:
        session.get(StagedRecord, row_id).started_at = utcnow() - timedelta(seconds=61)
    late = queue.claim(sqlite_url, row_id, deadline=60, token="R", redelivered=False)
    assert late is not None and late.crash_redeliveries == 1


def test_mark_dead_with_a_stale_token_changes_nothing(sqlite_url: str) -> None:
    """A spooled verdict of a task that no longer holds the row is dropped."""
    [row_id] = stage(sqlite_url, "a")
    queue.claim(sqlite_url, row_id, deadline=60, token="T1")
    with session_scope(sqlite_url) as session:
        session.get(StagedRecord, row_id).started_at = utcnow() - timedelta(seconds=61)
    assert queue.claim(sqlite_url, row_id, deadline=60, token="T2")
    kwargs: dict[str, Any] = {"error_class": "E", "message": "m", "traceback": None}
    assert not queue.mark_dead(sqlite_url, row_id, worker="w", expect_token="T1", **kwargs)
    assert queue.mark_dead(sqlite_url, row_id, worker="w", expect_token="T2", **kwargs)


# --- the spool ------------------------------------------------------------------------------


def death(row_id: int, token: str = "T") -> SpooledDeath:
    return SpooledDeath(row_id, token, "PermanentError", "HTTP 422", "Traceback ...", "w1")


def test_spool_goes_to_redis_or_to_a_file_and_drains_both(tmp_path: Path) -> None:
    """Redis first; a file when Redis is out; a drain replays both and empties them."""
    server = fakeredis.FakeServer()
    spool = Spool(lambda: fakeredis.FakeRedis(server=server), tmp_path / "spool")
    assert spool.put(death(1)) == "redis"
    server.connected = False
    assert spool.put(death(2)) == "file"
    server.connected = True
    assert spool.size() == 2
    replayed: list[int] = []
    assert spool.drain(lambda d: replayed.append(d.row_id)) == 2
    assert sorted(replayed) == [1, 2] and spool.size() == 0


def test_spool_keeps_what_cannot_be_replayed_yet(tmp_path: Path) -> None:
    """A replay that raises (the database is still out) leaves the entry for the next drain."""
    spool = Spool(None, tmp_path / "spool")
    spool.put(death(7))

    def still_down(_: SpooledDeath) -> None:
        raise ConnectionError("still down")

    with pytest.raises(ConnectionError):
        spool.drain(still_down)
    assert spool.size() == 1
    assert spool.drain(lambda d: None) == 1 and spool.size() == 0


# --- classify hooks -------------------------------------------------------------------------


def response(body: Any, status: int = 200) -> requests.Response:
    made = requests.Response()
    made.status_code, made._content = status, json.dumps(body).encode()
    made._content_consumed = True  # as requests leaves a response it has read
    return made


def test_classify_hook_turns_a_200_body_into_the_error_it_says() -> None:
    """A hook installed on a session raises what it returns for a 2xx; other statuses and good
    bodies pass untouched; a hook that crashes is a permanent error, not a pass."""
    session = requests.Session()
    classify.install(session, "tests.chaostools:classify_body", what="sink crm")
    [check] = session.hooks["response"]
    assert check(response({"ok": True})) is None
    assert check(response({"ok": False, "error": "x"}, status=503)) is None
    with pytest.raises(PermanentError, match="refused in a 200: duplicate"):
        check(response({"ok": False, "error": "duplicate"}))
    with pytest.raises(TransientError) as caught:
        check(response({"ok": False, "error": "busy", "retry_in": 7}))
    assert caught.value.retry_after == 7
    crashing = requests.Session()
    classify.install(crashing, "tests.test_retry_paths:broken_hook", what="sink crm")
    with pytest.raises(PermanentError, match=r"hook .* failed"):
        crashing.hooks["response"][0](response({"ok": True}))


def broken_hook(response: requests.Response) -> None:
    raise KeyError("a bug in the hook")


def test_classify_hook_path_is_validated_and_loaded() -> None:
    """The config refuses a malformed path; load_hook imports a real one and names a bad one."""
    body = {"source": {"url": "http://x/y"}, "sink": {"table": "t"}, "classify": "no colon"}
    with pytest.raises(ConfigError, match="classify"):
        parse_config({"integrations": {"a": body}}, file="f", env={})
    assert classify.load_hook("tests.chaostools:classify_body").__name__ == "classify_body"
    with pytest.raises(PermanentError, match="cannot be loaded"):
        classify.load_hook("tests.chaostools:nope")


# --- the reconciler -------------------------------------------------------------------------


def test_reconciler_leaves_waiting_pending_rows_while_the_queue_is_long(
    sqlite_url: str, tmp_path: Path
) -> None:
    """With messages waiting, only rows a worker held and pending rows ten deadlines overdue
    are republished; the other pending rows follow once the queue is empty."""
    settings = settings_from_env({"IHUB_DATABASE_URL": sqlite_url, "IHUB_HOME": str(tmp_path)})
    body = {"source": {"url": "https://api.example.com/x"}, "sink": {"table": "t"}}
    hub = Hub(settings, parse_config({"integrations": {"crm": body}}, file="x", env={}))
    waiting, forgotten, retrying = stage(sqlite_url, "w", "f", "r")
    queue.claim(sqlite_url, retrying, deadline=60)
    queue.mark_retrying(sqlite_url, retrying, RuntimeError("503"), utcnow())
    with session_scope(sqlite_url) as session:
        session.get(StagedRecord, waiting).due_at = utcnow() - timedelta(seconds=1)
        session.get(StagedRecord, forgotten).due_at = utcnow() - timedelta(seconds=3001)
        session.get(StagedRecord, retrying).due_at = utcnow() - timedelta(seconds=1)
    sent: list[int] = []
    assert sync.reconcile(hub, sent.extend, queue_depth=500) == 2
    assert sorted(sent) == sorted([forgotten, retrying])
    assert sync.reconcile(hub, sent.extend, queue_depth=0) == 1 and sent[-1] == waiting
