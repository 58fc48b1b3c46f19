"""Every message on a Redis broker's Celery event channels, as a test reads them."""

from __future__ import annotations

import base64
import json
import threading

import redis


class EventTap:
    """Every message on the broker's event channels, read in a thread: (routing key, events).

    Redis' channels are the server's, not a database's: kombu names an event channel after the
    database (``/<db>.celeryev/<routing key>``), and the tap listens to its own database's only,
    so a test run next to another on the same server reads none of the other's events."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)  # kept: collected, it closes the pool
        db = self._client.connection_pool.connection_kwargs.get("db", 0)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe(f"*/{db}.celeryev/*")
        self.messages: list[tuple[str, list[dict]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if message is None:
                continue
            envelope = json.loads(message["data"])
            body = envelope["body"]
            if envelope["properties"].get("body_encoding") == "base64":
                body = base64.b64decode(body)
            body = json.loads(body)
            events = body if isinstance(body, list) else [body]
            self.messages.append((message["channel"].decode().rsplit("/", 1)[-1], events))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
