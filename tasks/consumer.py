"""The worker's consumer, its task events sent in batches on a short timer.

Celery buffers a worker's task events (received, started, succeeded) and flushes them on the
event loop's next turn: when tasks end close together the buffer goes out as one ``task.multi``
message, but when each task waits on Postgres, as ihub's do, every event is a Redis ``PUBLISH``
of its own, on the worker's main process. Flushing at most every ``EVENT_FLUSH_EVERY`` seconds
(or when Celery's buffer of 24 fills) sends the same events, a fraction of a second later, in
far fewer messages. Flower and every other event receiver read ``task.multi`` as they read
single events (PITFALLS 37). On a warm shutdown Celery's own close of the dispatcher sends
what is still buffered (checked with a 30-second interval: every task's events arrived).
"""

from __future__ import annotations

from celery.worker.consumer import Consumer

EVENT_FLUSH_EVERY = 0.25  # seconds an event may wait for others; Flower refreshes every second


class EventBatchingConsumer(Consumer):
    """Celery's consumer, its buffered task events flushed on a timer, not on each loop turn."""

    _flush_pending = False

    def on_send_event_buffered(self) -> None:
        if self.hub and not self._flush_pending:
            self._flush_pending = True
            self.hub.call_later(EVENT_FLUSH_EVERY, self._flush_buffered)

    def _flush_buffered(self) -> None:
        self._flush_pending = False
        self._flush_events()
