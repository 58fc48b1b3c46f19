"""Shared fixtures: a database per test (SQLite) or per session (Postgres), a private Redis db.

Service-backed fixtures skip with the reason when Postgres or Redis is unreachable, and fail
instead when CI=true, so a CI run can never pass by skipping them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_URL = os.environ.get("IHUB_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def admin_engine(url: str):
    import sqlalchemy

    from models.db import normalize_url

    return sqlalchemy.create_engine(
        normalize_url(url),
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 5},
        pool_pre_ping=True,  # survives a server restart between setup and teardown
    )


REDIS_URL = os.environ.get("IHUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: service tests must not skip)")
    pytest.skip(reason)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    from models.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'ihub.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    import sqlalchemy

    try:
        engine = admin_engine(PG_URL)
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        unavailable(f"PostgreSQL unreachable at {PG_URL}: {type(exc).__name__}")
    return PG_URL


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A new, migrated database of its own for each test; dropped afterwards."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    from models.migrate import upgrade

    name = f"ihub_test_{secrets.token_hex(6)}"
    admin = admin_engine(pg_server_url)
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    from models.db import dispose_all

    dispose_all()
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated database URL, once on SQLite and once on a fresh Postgres database."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database number no other run is using, flushed before and after."""
    import redis

    base = REDIS_URL.rsplit("/", 1)[0]
    try:
        probe = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
        probe.ping()
    except Exception as exc:
        unavailable(f"Redis unreachable at {REDIS_URL}: {type(exc).__name__}")
    for number in range(1, 16):
        claim = probe.set(f"ihub-test-lock:{number}", os.getpid(), nx=True, ex=3600)
        if claim:
            break
    else:
        pytest.fail("no free Redis database number (1-15) for this test")
    url = f"{base}/{number}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()
    probe.delete(f"ihub-test-lock:{number}")
    probe.close()
