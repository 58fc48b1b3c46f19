"""The fetch lease as a running fetch holds it: a short TTL and a heartbeat.

The lease is renewed in the transaction of every page's checkpoint (``models.leases.hold``),
and by ``wait`` at least every TTL/3 while the run sleeps (rate limit, Retry-After, backoff),
so it dies with its holder within one TTL. A run that finds it lost raises ``LeaseLost`` at its
next checkpoint or heartbeat, before the watermark moves.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from models import leases
from pipeline.errors import IhubError


class LeaseLost(IhubError):
    """Another fetch took this integration's lease over: stop, the watermark stays."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"{self.name}: the fetch lease was lost (expired and taken over); run stopped"


def lease_name(integration: str) -> str:
    return f"fetch:{integration}"


def this_process(task_id: str | None = None) -> str:
    """``host pid 123 task abc``: what the status shows as the holder."""
    where = f"{socket.gethostname()} pid {os.getpid()}"
    return f"{where} task {task_id}" if task_id else where


class FetchLease:
    def __init__(
        self,
        database_url: str,
        integration: str,
        owner: str,
        ttl: float,
        *,
        holder: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url, self.integration, self.owner, self.ttl = database_url, integration, owner, ttl
        self.name = lease_name(integration)
        self.holder = holder or this_process()
        self._clock, self._sleep = clock, sleep
        self._renewed = clock()

    def acquire(self) -> bool:
        taken = leases.acquire(self.url, self.name, self.owner, self.ttl, self.holder)
        self._renewed = self._clock()
        return taken

    def renewed(self) -> None:
        """A checkpoint renewed the lease in its own transaction."""
        self._renewed = self._clock()

    def beat(self) -> None:
        """Renew when a third of the TTL has passed since the last renewal."""
        if self._clock() - self._renewed < self.ttl / 3:
            return
        if not leases.renew(self.url, self.name, self.owner, self.ttl):
            raise LeaseLost(self.integration)
        self._renewed = self._clock()

    def wait(self, seconds: float) -> None:
        """Sleep, renewing at least every TTL/3: a long Retry-After never frees the lease."""
        end = self._clock() + max(0.0, seconds)
        while (left := end - self._clock()) > 0:
            self._sleep(min(left, self.ttl / 3))
            self.beat()

    def release(self) -> None:
        leases.release(self.url, self.name, self.owner)
