"""Publishing a page of tasks: every task queued once, its task-sent event batched with the
others', the queue declared once per call."""

from __future__ import annotations

import ast
import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Producer, Queue

from tests.eventtap import EventTap

pytestmark = pytest.mark.services

ROWS = 1201  # three task.multi messages of up to 500 events


def test_a_page_of_tasks_is_queued_with_its_sent_events_in_three_messages(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IHUB_BROKER_URL", redis_url)
    monkeypatch.setenv("IHUB_HOME", str(tmp_path))
    monkeypatch.setenv("IHUB_CONFIG", str(tmp_path / "none.yaml"))
    from tasks.app import create_app
    from tasks.records import publish_records

    declared: list[Any] = []
    declare = Producer.maybe_declare

    def counting(self: Producer, entity: Any, *args: Any, **kwargs: Any) -> Any:
        declared.append(entity)
        return declare(self, entity, *args, **kwargs)

    monkeypatch.setattr(Producer, "maybe_declare", counting)
    app = create_app()
    tap = EventTap(redis_url)
    try:
        time.sleep(0.3)  # the tap's subscription is in place
        publish_records(app, list(range(1, ROWS + 1)))
        deadline = time.monotonic() + 10
        while sum(len(e) for _k, e in tap.messages) < ROWS and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        tap.close()
        app.close()

    queued = [json.loads(m) for m in redis.Redis.from_url(redis_url).lrange("ihub.process", 0, -1)]
    queued_ids = {m["headers"]["id"] for m in queued}
    assert len(queued) == ROWS == len(queued_ids)
    assert sorted(m["headers"]["argsrepr"] for m in queued)[0] in ("(1,)", "[1]")

    keys = [key for key, _events in tap.messages]
    events = [event for _key, batch in tap.messages for event in batch]
    assert keys == ["task.multi"] * 3, keys
    assert [len(batch) for _key, batch in tap.messages] == [500, 500, 201]
    assert {e["uuid"] for e in events} == queued_ids
    assert {e["type"] for e in events} == {"task-sent"}
    assert {e["name"] for e in events} == {"ihub.process_record"}
    assert {e["queue"] for e in events} == {"ihub.process"}
    assert sorted(ast.literal_eval(e["args"])[0] for e in events) == list(range(1, ROWS + 1))
    clocks = [e["clock"] for e in events]
    assert clocks == sorted(clocks) and len(set(clocks)) == ROWS
    assert all(e["hostname"] and e["timestamp"] and e["pid"] for e in events)
    assert sum(isinstance(entity, Queue) for entity in declared) == 1, declared


def test_a_chunk_shows_its_row_count_and_bounds_not_its_ids(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch task's ``argsrepr`` (Flower's args) names its rows' count, first and last; the
    task itself carries every id."""
    monkeypatch.setenv("IHUB_BROKER_URL", redis_url)
    monkeypatch.setenv("IHUB_HOME", str(tmp_path))
    monkeypatch.setenv("IHUB_CONFIG", str(tmp_path / "none.yaml"))
    from tasks.app import create_app
    from tasks.records import publish_batches

    app = create_app()
    tap = EventTap(redis_url)
    try:
        time.sleep(0.3)  # the tap's subscription is in place
        publish_batches(app, list(range(1, 1202)), 500)
        deadline = time.monotonic() + 10
        while sum(len(e) for _k, e in tap.messages) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        tap.close()
        app.close()
    queued = [json.loads(m) for m in redis.Redis.from_url(redis_url).lrange("ihub.process", 0, -1)]
    shown = sorted(m["headers"]["argsrepr"] for m in queued)
    assert shown == [
        "([1, ... 500: 500 rows],)",
        "([1001, ... 1201: 201 rows],)",
        "([501, ... 1000: 500 rows],)",
    ]
    events = [event for _key, batch in tap.messages for event in batch]
    assert sorted(e["args"] for e in events) == shown
    carried = [json.loads(base64.b64decode(m["body"]))[0][0] for m in queued]
    assert sorted(row for rows in carried for row in rows) == list(range(1, 1202))


class _RefusingProducer:
    def publish(self, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker gone")


def test_sent_events_that_cannot_be_sent_leave_the_published_tasks_standing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from celery import Celery

    from tasks.publishing import SentEvents

    events = SentEvents(Celery("t", broker="memory://"))
    events.publish("task-sent", {"uuid": "u1", "name": "ihub.process_record"}, None)
    with caplog.at_level(logging.WARNING, logger="tasks.publishing"):
        events.flush(_RefusingProducer())  # no exception: the tasks went out
    assert "1 task-sent event(s) not sent: broker gone" in caplog.text
    events.flush(_RefusingProducer())  # nothing kept: nothing sent twice
