"""Dead letters without workers: selection, requeue (rate, audit, dry run), purge, the redrive
policy, the CLI, fix-and-replay through the transform, the dashboard's action list."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text

from ihub.cli import main
from models import deadletters, queue
from models.db import session_scope
from models.deadletters import Selection
from models.schema import DeadLetter, RecordStatus, StagedRecord
from pipeline import sync
from pipeline.config import parse_config
from pipeline.delta import SourceRecord
from pipeline.errors import PermanentError
from pipeline.hub import Hub
from pipeline.settings import settings_from_env
from pipeline.timefmt import utcnow

T0 = datetime(2024, 5, 1, 12, 0, 0)


def stage(url: str, *ids: str, integration: str = "crm", payload: dict[str, Any] | None = None):
    records = [SourceRecord(i, T0, {"id": i, **(payload or {})}) for i in ids]
    with session_scope(url) as session:
        return queue.stage(session, integration, None, records, due_in=300)


def kill(url: str, row_id: int, error_class: str = "PermanentError", message: str = "422") -> None:
    assert queue.claim(url, row_id, deadline=60) is not None
    assert queue.mark_dead(
        url, row_id, error_class=error_class, message=message, traceback=None, worker="w1"
    )


@pytest.fixture
def letters(sqlite_url: str) -> dict[str, int]:
    """Five dead letters of two integrations, three kinds of reason."""
    crm = stage(sqlite_url, "a", "b", "c")
    erp = stage(sqlite_url, "x", "y", integration="erp")
    kill(sqlite_url, crm[0], "PermanentError", "HTTP 422: field email is INVALID")
    kill(sqlite_url, crm[1], "TransientError", "HTTP 503 from target")
    kill(sqlite_url, crm[2], "WorkerLost", "the worker was lost 4 times")
    kill(sqlite_url, erp[0], "TransientError", "connection refused")
    kill(sqlite_url, erp[1], "PermanentError", "rejected: invalid input syntax for bigint")
    return {"a": crm[0], "b": crm[1], "c": crm[2], "x": erp[0], "y": erp[1]}


def ids(url: str, **filters: Any) -> list[int]:
    return deadletters.matching_ids(url, Selection(**filters))


def test_selection_filters_combine(sqlite_url: str, letters: dict[str, int]) -> None:
    """Each filter narrows; given together all must hold; no filter at all matches nothing."""
    a, b, c, x, y = (letters[k] for k in "abcxy")
    assert ids(sqlite_url) == []
    assert ids(sqlite_url, everything=True) == sorted([a, b, c, x, y])
    assert ids(sqlite_url, integration="crm") == [a, b, c]
    assert ids(sqlite_url, error_class="TransientError") == [b, x]
    assert ids(sqlite_url, message="invalid") == [a, y]
    assert ids(sqlite_url, message="INVALID", integration="erp") == [y]
    assert ids(sqlite_url, reasons=("transient", "crash")) == [b, c, x]
    assert ids(sqlite_url, row_ids=(a, x, 999)) == [a, x]
    assert ids(sqlite_url, since=utcnow() - timedelta(hours=1)) == sorted([a, b, c, x, y])
    assert ids(sqlite_url, until=utcnow() - timedelta(hours=1)) == []


def test_reason_follows_the_error_class(sqlite_url: str, letters: dict[str, int]) -> None:
    """Retries spent is transient, a lost worker is crash, anything else permanent."""
    got = {d["record_id"]: d["reason"] for d in queue.list_dead(sqlite_url, limit=10)}
    assert got == {"a": "permanent", "b": "transient", "c": "crash", "x": "transient",
                   "y": "permanent"}  # fmt: skip


def test_requeue_is_batched_rate_limited_and_recorded(sqlite_url: str) -> None:
    """20 rows at 10/s in batches of 5: four publishes, sleeps adding up to about 1.5 s, one
    action row saying who and how many, each letter marked requeued by that actor."""
    rows = stage(sqlite_url, *[f"r{n:02d}" for n in range(20)])
    for row_id in rows:
        kill(sqlite_url, row_id)
    published: list[list[int]] = []
    slept: list[float] = []
    result = deadletters.requeue(
        sqlite_url,
        Selection(everything=True),
        actor="ada@ops",
        publish=published.append,
        rate=10,
        batch=5,
        sleep=slept.append,
        clock=lambda: sum(slept),
    )
    assert result.row_ids == rows and [len(p) for p in published] == [5, 5, 5, 5]
    assert slept == [0.5, 0.5, 0.5]
    [action] = deadletters.actions(sqlite_url)
    assert (action["action"], action["actor"], action["count"]) == ("requeue", "ada@ops", 20)
    assert action["selection"] == {"everything": True}
    letter = deadletters.show(sqlite_url, rows[0])
    assert letter is not None
    assert (letter["requeued_by"], letter["requeue_count"], letter["active"]) == (
        "ada@ops",
        1,
        False,
    )
    assert letter["status"] == RecordStatus.PENDING


def test_requeue_dry_run_moves_and_records_nothing(
    sqlite_url: str, letters: dict[str, int]
) -> None:
    """A dry run returns what would move; rows, letters and the action log stay as they were."""
    result = deadletters.requeue(
        sqlite_url, Selection(integration="erp"), actor="me", publish=None, dry_run=True
    )
    assert result.as_dict()["would_requeue"] == 2 and result.as_dict()["requeued"] == 0
    assert len(ids(sqlite_url, everything=True)) == 5
    assert deadletters.actions(sqlite_url) == []


def test_record_dying_again_during_a_requeue_is_not_requeued_twice(sqlite_url: str) -> None:
    """The selection is taken once: a letter that dies again mid-command waits for the next."""
    rows = stage(sqlite_url, "p", "q")
    for row_id in rows:
        kill(sqlite_url, row_id)

    def publish_and_fail_at_once(batch: list[int]) -> None:
        for row_id in batch:
            kill(sqlite_url, row_id, message="still broken")

    result = deadletters.requeue(
        sqlite_url, Selection(everything=True), actor="me", publish=publish_and_fail_at_once,
        batch=1,
    )  # fmt: skip
    assert result.row_ids == rows
    assert [d["requeue_count"] for d in queue.list_dead(sqlite_url)] == [1, 1]


def test_requeue_keeps_the_old_signature(sqlite_url: str, letters: dict[str, int]) -> None:
    """queue.requeue_dead still takes integration/row ids/everything, and is recorded too."""
    assert queue.requeue_dead(sqlite_url, integration="erp") == [letters["x"], letters["y"]]
    assert deadletters.actions(sqlite_url)[0]["count"] == 2


def test_purge_deletes_old_letters_only_and_is_recorded(sqlite_url: str) -> None:
    """Older than the cutoff: an active letter goes with its dead row, a requeued one alone;
    newer ones stay; a dry run only counts."""
    old_dead, old_requeued, fresh = stage(sqlite_url, "old", "history", "fresh")
    for row_id in (old_dead, old_requeued, fresh):
        kill(sqlite_url, row_id)
    queue.requeue_dead(sqlite_url, row_ids=[old_requeued])
    with session_scope(sqlite_url) as session:
        for letter in session.scalars(select(DeadLetter)):
            if letter.record_row_id != fresh:
                letter.last_failed_at = utcnow() - timedelta(days=40)
    week = timedelta(days=7)
    everything = Selection(everything=True)
    assert (
        deadletters.purge(
            sqlite_url, older_than=week, selection=everything, actor="me", dry_run=True
        )
        == 2
    )
    assert deadletters.purge(sqlite_url, older_than=week, selection=everything, actor="me") == 2
    with session_scope(sqlite_url) as session:
        remaining = set(session.scalars(select(StagedRecord.id)))
        assert set(session.scalars(select(DeadLetter.record_row_id))) == {fresh}
    assert remaining == {old_requeued, fresh}
    assert deadletters.actions(sqlite_url, action="purge")[0]["count"] == 2


def hub_for(url: str, home: Path, **integration: Any) -> Hub:
    settings = settings_from_env({"IHUB_DATABASE_URL": url, "IHUB_HOME": str(home)})
    body = {"source": {"url": "https://api.example.com/x"}, "sink": {"table": "t"}, **integration}
    return Hub(settings, parse_config({"integrations": {"crm": body}}, file="x", env={}))


def test_redrive_policy_requeues_transient_under_the_limit(
    sqlite_url: str, letters: dict[str, int], tmp_path: Path
) -> None:
    """Off by default; on, it requeues this integration's transient letters requeued fewer than
    max_requeues times, and records itself as a redrive."""
    published: list[int] = []
    assert sync.redrive(hub_for(sqlite_url, tmp_path), "crm", published.extend).row_ids == []
    hub = hub_for(sqlite_url, tmp_path, redrive={"enabled": True, "max_requeues": 2})
    assert sync.redrive(hub, "crm", published.extend).row_ids == [letters["b"]]
    kill(sqlite_url, letters["b"], "TransientError", "HTTP 503")  # it fails again
    assert sync.redrive(hub, "crm", published.extend).row_ids == [letters["b"]]
    kill(sqlite_url, letters["b"], "TransientError", "HTTP 503")  # requeued twice: left alone
    assert sync.redrive(hub, "crm", published.extend).row_ids == []
    assert published == [letters["b"]] * 2
    assert [a["action"] for a in deadletters.actions(sqlite_url)] == ["redrive", "redrive"]


def test_schedule_runs_redrive_only_when_enabled() -> None:
    """Beat gets an ihub.redrive entry per integration whose policy is on, at its period."""
    from tasks.schedule import build

    body = {"source": {"url": "http://x/y"}, "sink": {"table": "t"}}
    config = parse_config(
        {"integrations": {"a": body, "b": {**body, "redrive": {"enabled": True, "every": 900}}}},
        file="f.yaml",
        env={},
    )
    entries = build(config, reconcile_every=3)
    assert "ihub.redrive.a" not in entries and entries["ihub.reconcile"]["schedule"] == 3
    assert entries["ihub.redrive.b"]["schedule"] == 900 and entries["ihub.redrive.b"]["args"] == (
        "b",
    )


@pytest.fixture
def cli_env(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[int]]:
    monkeypatch.setenv("IHUB_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("IHUB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IHUB_ACTOR", "grace@ops")
    published: list[int] = []
    monkeypatch.setattr("tasks.records.publish_records", lambda app, ids: published.extend(ids))
    yield published
    from tasks.broker import stop_embedded

    stop_embedded(tmp_path / "home")  # a requeue started the embedded broker: no daemon left


def cli(*args: str) -> Any:
    result = CliRunner().invoke(main, ["dead", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_cli_list_show_requeue_history(
    cli_env: list[int], sqlite_url: str, letters: dict[str, int]
) -> None:
    """The dead group end to end on SQLite: filters, a masked show, a dry run, a requeue that
    publishes, and the history naming who did it."""
    assert len(cli("list")) == 5
    assert [d["record_id"] for d in cli("list", "--integration", "crm", "--reason", "crash")] == [
        "c"
    ]
    assert [d["record_id"] for d in cli("list", "--message", "bigint", "--since", "1h")] == ["y"]
    shown = cli("show", str(letters["a"]))
    assert shown["error_class"] == "PermanentError" and shown["payload"] == {"id": "a"}
    dry = cli("requeue", "--error-class", "TransientError", "--dry-run")
    assert dry["would_requeue"] == 2 and cli_env == []
    done = cli("requeue", "--error-class", "TransientError", "--rate", "0")
    assert sorted(done["row_ids"]) == sorted(cli_env) == sorted([letters["b"], letters["x"]])
    [entry] = cli("history")
    assert (entry["actor"], entry["count"]) == ("grace@ops", 2)
    assert entry["selection"] == {"error_class": "TransientError"}


def test_cli_requeue_and_purge_need_a_selection(cli_env: list[int], letters: dict) -> None:
    """Without ids, a filter or --all, requeue and purge refuse with exit code 2."""
    for args in (["requeue"], ["purge", "--older-than", "30d"]):
        result = CliRunner().invoke(main, ["dead", *args])
        assert result.exit_code == 2 and "--all" in result.output
    assert cli("purge", "--older-than", "30d", "--all", "--yes") == {"purged": 0, "would_purge": 0}


def test_show_masks_secret_looking_payload_fields(cli_env: list[int], sqlite_url: str) -> None:
    """A dead letter's payload is shown with password/token-like values masked."""
    [row_id] = stage(sqlite_url, "s1", payload={"password": "hunter2", "api_key": "k-123456"})
    kill(sqlite_url, row_id)
    payload = cli("show", str(row_id))["payload"]
    assert payload["id"] == "s1" and "hunter2" not in json.dumps(payload)
    assert "k-123456" not in json.dumps(payload)


def test_requeue_after_a_mapping_fix_runs_the_new_transform(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The staged payload is the raw source record and the transform runs at process time: a
    record dead for a bad cast lands, with the fixed mapping, once requeued."""
    broken = {"fields": {"id": "id", "priority": {"path": "priority", "type": "int"}}}
    fixed = {"fields": {"id": "id", "priority": {"path": "priority", "type": "str"}}}
    [row_id] = stage(sqlite_url, "p1", payload={"priority": "urgent"})
    outcome = sync.process_record(hub_for(sqlite_url, tmp_path, transform=broken), row_id)
    assert outcome.status == "dead" and isinstance(outcome.error, PermanentError)
    assert "priority" in queue.show_dead(sqlite_url, row_id)["message"]
    assert queue.requeue_dead(sqlite_url, row_ids=[row_id], actor="me") == [row_id]
    hub = hub_for(sqlite_url, tmp_path, transform=fixed)
    assert sync.process_record(hub, row_id).status == "done"
    with session_scope(sqlite_url) as session:
        [(priority,)] = session.execute(text("SELECT priority FROM t WHERE id = 'p1'")).all()
    assert priority == "urgent"


def test_dashboard_shows_redrive_and_requeue_actions(
    sqlite_url: str, letters: dict[str, int], tmp_path: Path
) -> None:
    """The status page lists what the redrive policy and operators did, with counts."""
    from ihub.report import collect_status
    from ihub.web.pages import dashboard

    hub = hub_for(sqlite_url, tmp_path, redrive={"enabled": True})
    sync.redrive(hub, "crm", lambda ids: None)
    queue.requeue_dead(sqlite_url, integration="erp", actor="ada@ops")
    status = collect_status(sqlite_url, None)
    assert [(a["action"], a["count"]) for a in status["dead_letter_actions"]] == [
        ("requeue", 2),
        ("redrive", 1),
    ]
    html = dashboard(status, flower_url=None, hours=24)
    widget = html[html.index('id="dead-letter-actions"') :]
    assert "redrive policy of crm" in widget and "ada@ops" in widget
