"""The Celery configuration: the PITFALLS baseline is in force, and the guards trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import parse_config
from pipeline.errors import ConfigError
from tasks.checks import check_visibility


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("IHUB_HOME", str(tmp_path))
    monkeypatch.setenv("IHUB_BROKER_URL", "redis://127.0.0.1:1/0")  # never connected to
    monkeypatch.setenv("IHUB_CONFIG", str(tmp_path / "missing.yaml"))
    from tasks.app import create_app

    return create_app()


def test_baseline_settings_are_in_force(app) -> None:
    """JSON only, late acks, reject on worker loss, prefetch 1, events on, VT in all places."""
    conf = app.conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_cancel_long_running_tasks_on_connection_loss
    assert conf.worker_send_task_events and conf.task_send_sent_event
    assert conf.task_ignore_result
    vt = conf.visibility_timeout
    assert conf.broker_transport_options["visibility_timeout"] == vt
    assert conf.result_backend_transport_options["visibility_timeout"] == vt


def test_every_setting_is_found_in_the_first_map_and_keeps_its_value(app) -> None:
    """``tasks.conf`` copies each setting into the app's own map, where a lookup ends at once:
    celeryconfig's values and Celery's defaults read as before, and a setting changed later
    reads its new value."""
    from celery import Celery

    import celeryconfig

    plain = Celery("plain")
    plain.config_from_object("celeryconfig")
    conf, first = app.conf, app.conf.maps[0]
    assert first is conf.changes
    for name in ("task_protocol", "task_default_exchange_type", "worker_send_task_events"):
        assert name in first and conf[name] == plain.conf[name]  # defaults and celeryconfig's
    own = [n for n in vars(celeryconfig) if n.islower() and not n.startswith("_")]
    assert own and all(n in first for n in own)
    set_by_create_app = {
        *("broker_url", "broker_transport_options", "result_backend_transport_options"),
        *("visibility_timeout", "ihub_embedded_home", "beat_schedule", "beat_schedule_filename"),
    }
    same = set(first) - set_by_create_app
    assert {n: conf[n] for n in same} == {n: plain.conf[n] for n in same}
    conf.task_default_priority = 7
    assert conf.task_default_priority == 7 and app.conf["task_default_priority"] == 7


def test_every_task_has_a_hard_limit_inside_the_visibility_timeout(app) -> None:
    """(prefetch + 1) x the longest hard limit stays under the visibility timeout (PITFALLS 2)."""
    limits = [t.time_limit for n, t in app.tasks.items() if n.startswith("ihub.")]
    assert len(limits) == 5 and all(limits)  # fetch, process record and batch, reconcile, redrive
    assert (app.conf.worker_prefetch_multiplier + 1) * max(limits) < app.conf.visibility_timeout


@pytest.mark.services
def test_channel_uses_the_configured_visibility_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    """The Redis channel kombu opens carries our timeout, not kombu's default (PITFALLS 3)."""
    monkeypatch.setenv("IHUB_HOME", str(tmp_path))
    monkeypatch.setenv("IHUB_BROKER_URL", redis_url)
    monkeypatch.setenv("IHUB_CONFIG", str(tmp_path / "missing.yaml"))
    from tasks.app import create_app

    app = create_app()
    with app.connection_for_write() as connection:
        assert connection.default_channel.visibility_timeout == app.conf.visibility_timeout


def test_check_refuses_a_backoff_that_outlives_the_visibility_timeout(app) -> None:
    """A retry countdown plus the hard limit reaching the timeout is refused at start."""
    config = parse_config(
        {
            "integrations": {
                "slow": {
                    "source": {"url": "http://127.0.0.1:1/x"},
                    "sink": {"table": "t"},
                    "retry": {"backoff_max": 7000},
                }
            }
        },
        file="f.yaml",
        env={},
    )
    limits = {"ihub.process_record": 300.0, "ihub.fetch_delta": 1800.0}
    with pytest.raises(ConfigError) as caught:
        check_visibility(app.conf, config, limits)
    assert "integrations.slow.retry.backoff_max" in str(caught.value)


def test_check_refuses_a_time_limit_too_long_for_the_prefetch_depth(app) -> None:
    """A hard limit that (prefetch + 1) times reaches the timeout is refused."""
    with pytest.raises(ConfigError, match="longest hard time limit"):
        check_visibility(app.conf, None, {"ihub.fetch_delta": app.conf.visibility_timeout / 2})


def test_schedule_has_reconcile_and_expiring_fetches(tmp_path: Path) -> None:
    """Beat runs the reconciler, and each fetch tick expires after one interval."""
    from tasks.schedule import build

    config = parse_config(
        {
            "integrations": {
                "a": {"schedule": 60, "source": {"url": "http://x/y"}, "sink": {"table": "t"}},
                "b": {
                    "schedule": "*/5 * * * *",
                    "source": {"url": "http://x/y"},
                    "sink": {"table": "t"},
                },
            }
        },
        file="f.yaml",
        env={},
    )
    entries = build(config)
    assert "ihub.reconcile" in entries
    assert entries["ihub.fetch_delta.a"]["options"]["expires"] == 60.0
    assert entries["ihub.fetch_delta.a"]["args"] == ("a",)
    assert "ihub.fetch_delta.b" in entries
