"""The demo source in a process of its own, driven over a pipe.

In the benchmark's own process the source's HTTP threads share one interpreter lock with the
fetch (ihub's or dlt's) that reads it, so a figure would measure that contention; here the
source has its own interpreter, as a real API has its own machine.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.connection import Connection
from typing import Any

from ihub.demo.options import DemoSourceOptions

REPLY_TIMEOUT = 600.0  # seconds: seeding a million records takes a while


def _serve(options: DemoSourceOptions, pipe: Connection) -> None:
    from ihub.demo.source import DemoSource

    source = DemoSource(options).start()
    pipe.send((source.url, source.records_url, source.token_url))
    while True:
        try:
            method, args, kwargs = pipe.recv()
        except EOFError:
            break
        if method == "stop":
            break
        try:
            pipe.send(("ok", getattr(source, method)(*args, **kwargs)))
        except Exception as exc:
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    source.stop()


class SourceProcess:
    """What the benchmark asks of ``DemoSource`` (seed, update, snapshot, its URLs), with the
    server running in a child process."""

    def __init__(self, options: DemoSourceOptions) -> None:
        self.options = options
        self._pipe, child = multiprocessing.Pipe()
        context = multiprocessing.get_context("spawn")
        self._process = context.Process(target=_serve, args=(options, child), daemon=True)

    def start(self) -> SourceProcess:
        self._process.start()
        if not self._pipe.poll(60):
            raise RuntimeError("the demo source process did not start within 60 s")
        self.url, self.records_url, self.token_url = self._pipe.recv()
        return self

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._pipe.send((method, args, kwargs))
        if not self._pipe.poll(REPLY_TIMEOUT):
            raise RuntimeError(f"the demo source process did not answer {method} in time")
        status, value = self._pipe.recv()
        if status != "ok":
            raise RuntimeError(f"demo source {method}: {value}")
        return value

    def seed(self, n: int) -> None:
        self._call("seed", n)

    def update(self, record_id: str, **fields: Any) -> dict[str, Any]:
        return self._call("update", record_id, **fields)

    def update_many(self, record_ids: list[str], **fields: Any) -> None:
        self._call("update_many", record_ids, **fields)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return self._call("snapshot")

    def stop(self) -> None:
        if self._process.is_alive():
            self._pipe.send(("stop", (), {}))
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(10)
