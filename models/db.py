"""Engines, created lazily per process so that no pool crosses a fork (PITFALLS 30)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

_engines: dict[tuple[int, str], Engine] = {}
_sessions: dict[tuple[int, str], sessionmaker[Session]] = {}
PING_AFTER_IDLE = 1.0  # seconds


def get_engine(url: str) -> Engine:
    """The engine for ``url`` in this process; a forked child gets its own."""
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        engine = _create(url)
        _engines[key] = engine
    return engine


def dispose_all() -> None:
    """Forget engines inherited from a parent process without closing its connections."""
    for engine in list(_engines.values()):
        engine.dispose(close=False)
    _engines.clear()
    _sessions.clear()


def normalize_url(url: str) -> str:
    """``postgresql://`` means psycopg2 here (SQLAlchemy 2.1 would pick psycopg 3)."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


def _create(url: str, **options: Any) -> Engine:
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database)
    engine = create_engine(
        parsed,
        pool_size=5,
        max_overflow=5,
        connect_args=_pg_connect_args(parsed.get_backend_name()),
        **options,
    )
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection before use when it sat idle for ``PING_AFTER_IDLE`` seconds
    (a restarted server has closed it), not at every checkout as ``pool_pre_ping`` does: a
    worker checks out twice per record, back to back, and each ping is a round trip (measured:
    a third of the statements a record costs). A connection that dies between two back-to-back
    uses fails its statement as a disconnect, which invalidates the whole pool; the task
    retries on its database-outage budget."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE:
            return
        try:
            with contextlib.closing(dbapi_connection.cursor()) as cursor:
                cursor.execute("SELECT 1")
        except Exception as exc:  # the pool discards it and checks out another (up to 3 times)
            raise DisconnectionError(str(exc)) from exc


def _pg_connect_args(backend: str) -> dict[str, Any]:
    if backend != "postgresql":
        return {}
    return {"connect_timeout": 10, "application_name": "ihub"}


def _sqlite_engine(url: str, database: str | None) -> Engine:
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's BEGIN below decide transactions, not the sqlite3 module.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front: two writers queue on busy_timeout instead of
        # failing a lock upgrade, and it is SQLite's stand-in for SELECT ... FOR UPDATE.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def dialect_insert(session: Session, table: Any) -> Any:
    """``INSERT`` with ``ON CONFLICT`` support for the session's dialect (PostgreSQL or SQLite,
    the two ihub supports)."""
    from sqlalchemy.dialects import postgresql, sqlite

    name = session.get_bind().dialect.name
    return (postgresql if name == "postgresql" else sqlite).insert(table)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back on any error."""
    key = (os.getpid(), url)
    factory = _sessions.get(key)
    if factory is None:
        factory = _sessions[key] = sessionmaker(bind=get_engine(url), expire_on_commit=False)
    with factory() as session, session.begin():
        yield session
