"""The record path's own psycopg2 connections: kept open by each process, in autocommit.

A record sends two statements (the read or claim of its row; the sink write with its done
mark). Through SQLAlchemy each one also paid for a pool checkout and return, a ``Connection``
with its events and a result object: client CPU of the order of the driver's own
(bench/stages.py, ``per_record_client_cpu_ms``; bench/README.md). These statements are driver
SQL already, so they go straight to a connection the process keeps.

A connection idle for ``PING_AFTER_IDLE`` seconds is pinged before use, as the pool's are
(``models.db``): a restarted server costs a reconnect, not a failed record. A connection found
lost (``is_lost``) is closed and dropped, and its error goes up: psycopg2's
``OperationalError`` or ``InterfaceError``, a database outage to the caller
(``pipeline.spool.is_database_outage``), retried as one. Connections are kept per process id,
so a forked child never touches (nor, by closing, ends) its parent's session.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.extensions
from sqlalchemy.engine import make_url

from models.db import PING_AFTER_IDLE, normalize_url

KEEP = 4  # idle connections kept per process and database (a threads pool uses several)


@dataclass
class DriverConnection:
    """A psycopg2 connection in autocommit, with the statements its server session holds."""

    raw: psycopg2.extensions.connection
    prepared: set[str] = field(default_factory=set)
    idle_since: float = field(default_factory=time.monotonic)


_idle: dict[tuple[int, str], list[DriverConnection]] = {}


@contextlib.contextmanager
def connection(url: str) -> Iterator[DriverConnection]:
    """A kept connection to ``url`` (PostgreSQL) for the block; back to the process after it,
    unless it failed as a lost connection."""
    idle = _idle.setdefault((os.getpid(), url), [])
    conn = _take(idle, url)
    try:
        yield conn
    except psycopg2.Error as exc:
        if is_lost(conn, exc):
            _close(conn)
        else:  # a refused statement: autocommit rolled it back, the session goes on
            _give_back(idle, conn)
        raise
    except BaseException:  # interrupted between statements (a time limit): start afresh
        _close(conn)
        raise
    _give_back(idle, conn)


def is_lost(conn: DriverConnection, exc: psycopg2.Error) -> bool:
    """The connection is gone: closed by either side, or failed below the SQL level (an
    ``OperationalError`` with no SQLSTATE: the socket). A statement refused with a code
    (even one psycopg2 files as operational, as a missing prepared statement) leaves the
    session usable."""
    if conn.raw.closed or isinstance(exc, psycopg2.InterfaceError):
        return True
    return isinstance(exc, psycopg2.OperationalError) and exc.pgcode is None


def _take(idle: list[DriverConnection], url: str) -> DriverConnection:
    while idle:
        conn = idle.pop()
        if time.monotonic() - conn.idle_since < PING_AFTER_IDLE and not conn.raw.closed:
            return conn
        try:
            with conn.raw.cursor() as cursor:
                cursor.execute("SELECT 1")
            return conn
        except psycopg2.Error:
            _close(conn)
    return DriverConnection(_connect(url))


def _give_back(idle: list[DriverConnection], conn: DriverConnection) -> None:
    if conn.raw.closed or len(idle) >= KEEP:
        _close(conn)
        return
    conn.idle_since = time.monotonic()
    idle.append(conn)


def _connect(url: str) -> psycopg2.extensions.connection:
    parsed = make_url(normalize_url(url))
    args: dict[str, Any] = parsed.translate_connect_args(username="user", database="dbname")
    args.update(parsed.query)
    raw = psycopg2.connect(connect_timeout=10, application_name="ihub", **args)
    raw.autocommit = True
    return raw


def _close(conn: DriverConnection) -> None:
    with contextlib.suppress(psycopg2.Error):
        conn.raw.close()
