"""The dead-letter spool: where a dead letter waits when the database cannot take it.

A record found dead while Postgres is briefly unreachable must still end with exactly one dead
letter carrying the real reason (PITFALLS 18). The worker puts the verdict here, in Redis (shared
by every host) or, when Redis is out too, in a file under ``$IHUB_HOME/spool``; the reconciler
replays the spool through ``queue.mark_dead``, which is idempotent (one letter per record row)
and guarded by the claim token, so a late replay never kills a record that another task has
taken over since. If a host and its spool file are lost, the record is still safe: its row
stays open, and the reconciler republishes it when its lease runs out.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg2
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

log = logging.getLogger(__name__)

KEY = "ihub.spool.dead"


def is_database_outage(exc: BaseException) -> bool:
    """The database is unreachable or dropped the connection: retry later, nothing committed."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
        return True  # from the driver itself, where ihub sends driver SQL
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


@dataclass(frozen=True)
class SpooledDeath:
    row_id: int
    token: str | None
    error_class: str
    message: str
    traceback: str | None
    worker: str | None

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, text: str | bytes) -> SpooledDeath:
        return cls(**json.loads(text))


class Spool:
    """``client`` makes a redis-py client (None: files only); ``directory`` is the fallback."""

    def __init__(
        self, client: Callable[[], Any] | None, directory: Path, *, key: str = KEY
    ) -> None:
        self.client = client
        self.directory = directory
        self.key = key

    def put(self, death: SpooledDeath) -> str:
        """Keep ``death`` until it can be written; where it went ("redis" or "file")."""
        if self.client is not None:
            try:
                self.client().rpush(self.key, death.dumps())
                return "redis"
            except Exception as exc:  # Redis is out as well: the local file is the last resort
                log.warning("dead-letter spool: Redis unavailable (%s)", type(exc).__name__)
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"dead-{time.time_ns()}-{os.getpid()}"
        partial = self.directory / f".{name}.tmp"
        with partial.open("w", encoding="utf-8") as handle:
            handle.write(death.dumps())
            handle.flush()
            os.fsync(handle.fileno())
        partial.rename(self.directory / f"{name}.json")
        return "file"

    def drain(self, apply: Callable[[SpooledDeath], object]) -> int:
        """Replay every spooled death through ``apply``; how many were replayed.

        An entry whose replay raises (the database is still out) stays in the spool.
        """
        return self._drain_redis(apply) + self._drain_files(apply)

    def _drain_redis(self, apply: Callable[[SpooledDeath], object]) -> int:
        if self.client is None:
            return 0
        client, done = self.client(), 0
        while (raw := client.lpop(self.key)) is not None:
            try:
                apply(SpooledDeath.loads(raw))
            except Exception:
                client.rpush(self.key, raw)
                raise
            done += 1
        return done

    def _drain_files(self, apply: Callable[[SpooledDeath], object]) -> int:
        if not self.directory.is_dir():
            return 0
        done = 0
        for path in sorted(self.directory.glob("dead-*.json")):
            claimed = path.with_name(f".{path.stem}.{os.getpid()}.draining")
            try:
                path.rename(claimed)  # another drainer on this host took it first
            except FileNotFoundError:
                continue
            try:
                apply(SpooledDeath.loads(claimed.read_text(encoding="utf-8")))
            except Exception:
                claimed.rename(path)
                raise
            claimed.unlink()
            done += 1
        return done

    def size(self) -> int:
        files = len(list(self.directory.glob("dead-*.json"))) if self.directory.is_dir() else 0
        if self.client is None:
            return files
        try:
            return files + int(self.client().llen(self.key))
        except Exception:
            return files
