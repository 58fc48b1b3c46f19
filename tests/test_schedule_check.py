"""Cron schedules are judged by Celery's own parser, once, by every process that loads them.

`ihub check`, `ihub worker`, `ihub beat` and the Celery app factory refuse the same configs
with the same message (PITFALLS 51).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from ihub.cli import main
from pipeline.errors import ConfigError


def write_config(tmp_path: Path, schedule: str) -> Path:
    integration = {
        "schedule": schedule,
        "source": {"url": "http://127.0.0.1:9/records", "auth": {"type": "none"}},
        "sink": {"table": "t"},
    }
    path = tmp_path / "integrations.yaml"
    path.write_text(json.dumps({"integrations": {"nightly": integration}}), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("schedule", "field"),
    [("0 0 * * 7", "day of week '7'"), ("*/0 * * * *", "minute '*/0'"), ("0 0 31 2 *", "never")],
    ids=["weekday_7", "step_zero", "impossible_date"],
)
def test_check_refuses_cron_that_celery_refuses(tmp_path: Path, schedule: str, field: str) -> None:
    """`ihub check` names file, key and Celery's reason for a cron beat could not build."""
    path = write_config(tmp_path, schedule)
    result = CliRunner().invoke(main, ["check", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}: integrations.nightly.schedule: cron '{schedule}'" in result.output
    assert field in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("schedule", ["0 9 * * mon", "*/5 * * * *", "0 0 1 jan sun-fri"])
def test_check_accepts_cron_that_celery_accepts(tmp_path: Path, schedule: str) -> None:
    """Day and month names, steps and ranges that Celery's crontab takes pass `ihub check`."""
    result = CliRunner().invoke(main, ["check", "--config", str(write_config(tmp_path, schedule))])
    assert result.exit_code == 0, result.output
    assert "ok: 1 integration(s)" in result.output


def test_beat_schedule_uses_the_accepted_cron(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config `ihub check` accepts builds an app whose beat entry is that crontab."""
    monkeypatch.setenv("IHUB_HOME", str(tmp_path))
    monkeypatch.setenv("IHUB_BROKER_URL", "redis://127.0.0.1:1/0")  # never connected to
    monkeypatch.setenv("IHUB_CONFIG", str(write_config(tmp_path, "0 9 * * mon")))
    from tasks.app import create_app

    entry = create_app().conf.beat_schedule["ihub.fetch_delta.nightly"]
    assert entry["schedule"].day_of_week == {1} and entry["schedule"].hour == {9}


def test_app_factory_refuses_an_invalid_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building the Celery app raises `ihub check`'s error instead of scheduling only reconcile."""
    path = write_config(tmp_path, "0 0 * * 7")
    monkeypatch.setenv("IHUB_HOME", str(tmp_path))
    monkeypatch.setenv("IHUB_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("IHUB_CONFIG", str(path))
    from tasks.app import create_app

    with pytest.raises(ConfigError) as caught:
        create_app()
    check = CliRunner().invoke(main, ["check", "--config", str(path)])
    assert f"error: {caught.value}" in check.output


@pytest.mark.parametrize("command", ["worker", "beat"])
def test_worker_and_beat_refuse_what_check_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """`ihub worker` and `ihub beat` exit 2 with `ihub check`'s message and never exec Celery."""

    def no_exec(*_: object) -> None:
        raise AssertionError(f"celery {command} must not start")

    path = write_config(tmp_path, "*/0 * * * *")
    monkeypatch.setattr(os, "execv", no_exec)
    monkeypatch.setenv("IHUB_HOME", str(tmp_path))
    monkeypatch.setenv("IHUB_CONFIG", str(path))
    monkeypatch.setenv("IHUB_DATABASE_URL", f"sqlite:///{tmp_path / 'ihub.db'}")
    check = CliRunner().invoke(main, ["check", "--config", str(path)])
    started = CliRunner().invoke(main, [command])
    assert started.exit_code == check.exit_code == 2
    assert started.output == check.output and "schedule: cron '*/0 * * * *'" in started.output
