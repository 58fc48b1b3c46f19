"""Task events from real workers reach an event receiver in batches, none lost at shutdown."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from ihub.cli.runner import wait_for_run
from ihub.demo.source import DemoSource, DemoSourceOptions
from pipeline import sync
from pipeline.hub import Hub
from tests.eventtap import EventTap
from tests.workers import service_env, workers, write_config

pytestmark = [pytest.mark.services, pytest.mark.slow]

RECORDS = 37  # 111 worker events: not a multiple of the buffer of 24, so the stop flushes some


def test_every_task_event_arrives_batched_and_the_last_at_shutdown(
    tmp_path: Path, pg_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = DemoSource(DemoSourceOptions(token_lifetime=30)).start()
    try:
        source.seed(RECORDS)
        config = write_config(tmp_path / "i.yaml", source.url, source.options.client_secret)
        env = service_env(tmp_path, config, pg_url, redis_url)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        from tasks import app as app_module
        from tasks.records import publish_records

        monkeypatch.setattr(app_module, "_app", None)
        app, hub = app_module.get_app(), Hub.from_env()
        tap = EventTap(redis_url)
        try:
            with workers(env, count=1, concurrency=2):
                run = sync.fetch_delta(
                    hub, "incidents", lambda ids: publish_records(app, ids), owner="test"
                )
                counts = wait_for_run(hub.database_url, run.run_id, timeout=120)
                assert counts["done"] == RECORDS, counts
            time.sleep(1)  # the tap reads what the worker sent as it stopped
        finally:
            tap.close()
    finally:
        source.stop()

    task_messages = [(key, events) for key, events in tap.messages if key.startswith("task.")]
    kinds = Counter(
        event["type"]
        for _key, events in task_messages
        for event in events
        if event.get("name") == "ihub.process_record" or event["type"] != "task-sent"
    )
    processed = {
        event["uuid"]
        for _key, events in task_messages
        for event in events
        if event["type"] == "task-succeeded"
    }
    received = {
        event["uuid"]
        for _key, events in task_messages
        for event in events
        if event["type"] == "task-received" and event.get("name") == "ihub.process_record"
    }
    assert received and received <= processed, (
        f"tasks received but never reported succeeded: {len(received - processed)}; {kinds}"
    )
    # the publisher's task-sent events come batched too (tests/test_publishing.py): count the
    # workers' messages by what they hold
    from_workers = [
        (key, events) for key, events in task_messages if events[0]["type"] != "task-sent"
    ]
    worker_events = sum(len(events) for _key, events in from_workers)
    worker_messages = len(from_workers)
    assert any(key == "task.multi" for key, _ in from_workers), kinds
    assert worker_messages * 2 <= worker_events, (
        f"{worker_events} task events came in {worker_messages} messages: not batched"
    )
