"""Publishing many tasks at once: pipelined, their task-sent events in batches.

With ``task_send_sent_event`` (Flower sees a task while it waits in its queue) Celery sends a
``task-sent`` event after each message, one more message on the broker for every task, and on
the publisher a quarter of a publish's CPU (measured: 240 -> 185 us a task; bench/README.md).
``publish_each`` hands Celery a collector instead, which keeps the events of one call and sends
them as ``task.multi`` messages of up to ``EVENTS_PER_MESSAGE`` events, the form a worker's
buffered events take, which Flower and every Celery event receiver read as single events
(PITFALLS 37). The events are monitoring only: if they cannot be sent after the tasks were,
the tasks stand and a warning says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery
from celery.events import Event
from celery.utils.time import utcoffset

PIPELINE = 1000  # Redis commands per pipeline
EVENTS_PER_MESSAGE = 500

log = logging.getLogger(__name__)


def publish_each(
    app: Celery,
    name: str,
    calls: Iterable[tuple[Any, ...]],
    describe: Callable[[tuple[Any, ...]], str] | None = None,
) -> int:
    """Publish task ``name`` once per argument tuple in ``calls``, over one pooled producer,
    pipelined; the number published. ``describe`` gives the arguments as Flower shows them
    (the message's ``argsrepr``), where Celery's own ``saferepr`` would be slow or unreadable."""
    task: Any = app.tasks[name]
    events = SentEvents(app)
    count = 0
    with app.producer_or_acquire() as producer:
        with _pipelined(producer):
            for args in calls:
                # the first message declares the task's queue (Celery's default); declaring it
                # again at each message cost a fifth of a publish's CPU (185 -> 148 us a task)
                declare = None if count == 0 else ()
                shown = None if describe is None else describe(args)
                task.apply_async(
                    args,
                    producer=producer,
                    event_dispatcher=events,
                    declare=declare,
                    argsrepr=shown,
                    kwargsrepr="{}",  # none are passed; Celery's saferepr of {} costs as much
                )
                count += 1
        events.flush(producer)
    return count


class SentEvents:
    """Stands in for Celery's event dispatcher in ``send_task_message``: keeps each
    ``task-sent`` event, stamped as Celery stamps it (host, pid, the app's logical clock), until
    ``flush``."""

    def __init__(self, app: Celery) -> None:
        self._dispatcher = _dispatcher(app)
        self._clock = app.clock
        self._events: list[dict[str, Any]] = []
        self._retry_policy: dict[str, Any] | None = None

    def publish(self, type: str, fields: dict[str, Any], producer: Any, **options: Any) -> None:
        dispatcher = self._dispatcher
        event = Event(
            type,
            hostname=dispatcher.hostname,
            utcoffset=utcoffset(),
            pid=dispatcher.pid,
            clock=self._clock.forward(),
            **fields,
        )
        self._events.append(event)
        self._retry_policy = options.get("retry_policy")

    def flush(self, producer: Any) -> None:
        """Send what was kept, as ``task.multi`` messages on ``producer``."""
        events, self._events = self._events, []
        dispatcher = self._dispatcher
        for start in range(0, len(events), EVENTS_PER_MESSAGE):
            try:
                producer.publish(
                    events[start : start + EVENTS_PER_MESSAGE],
                    routing_key="task.multi",
                    exchange=dispatcher.exchange.name,
                    declare=[dispatcher.exchange],
                    serializer=dispatcher.serializer,
                    headers=dispatcher.headers,
                    delivery_mode=dispatcher.delivery_mode,
                    retry=True,
                    retry_policy=self._retry_policy,
                )
            except Exception as exc:  # the tasks are out: losing their events loses no record
                log.warning("%d task-sent event(s) not sent: %s", len(events) - start, exc)
                return


def _dispatcher(app: Celery) -> Any:
    """The app's event settings (exchange, serializer, host, this process's pid); it never
    sends on its own."""
    dispatcher = getattr(app, "_ihub_sent_events", None)
    if dispatcher is None or dispatcher.pid != os.getpid():
        dispatcher = app.events.Dispatcher(enabled=False)
        app._ihub_sent_events = dispatcher  # type: ignore[attr-defined]
    return dispatcher


def _pipelined(producer: Any) -> Any:
    """kombu's publish batch (5.7+): the messages go to Redis in pipelines of PIPELINE
    commands, not one round trip each (measured: 2-4x the publish rate)."""
    batch = getattr(producer, "batch", None)
    return batch(max_size=PIPELINE) if batch is not None else contextlib.nullcontext()
