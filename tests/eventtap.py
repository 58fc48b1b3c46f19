"""Every message on a Redis broker's Celery event channels, as a test reads them."""

from __future__ import annotations

import base64
import json
import threading

import redis


class EventTap:
    """Every message on the broker's event channels, read in a thread: (routing key, events)."""

    def __init__(self, url: str) -> None:
        self._pubsub = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe("*celeryev*")
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
