"""Alembic the usual way, on any database URL (SQLite or Postgres alike).

``ihub db upgrade|downgrade|stamp|current|history`` call these; ``upgrade --sql`` writes the
SQL for a DBA who applies migrations by hand (offline mode, Postgres). Every process that reads
or writes the schema first asks ``schema_problem``, so a database that was never migrated
answers "run `ihub db upgrade`" instead of a ``no such table`` traceback.
"""

from __future__ import annotations

import io
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).parent / "migrations"
OFFLINE_SQL_POSTGRES_ONLY = (
    "offline SQL (--sql) is written for PostgreSQL; on SQLite run `ihub db upgrade`"
)


def alembic_config(url: str, output: io.StringIO | None = None) -> Config:
    config = Config(output_buffer=output, stdout=output or io.StringIO())
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def upgrade_sql(url: str, revision: str = "head") -> str:
    """The SQL that ``upgrade`` would run, for a DBA; PostgreSQL only (SQLite's batch
    migrations need the live table, and nobody hands SQLite SQL to a DBA)."""
    if make_url(url).get_backend_name() != "postgresql":
        raise ValueError(OFFLINE_SQL_POSTGRES_ONLY)
    output = io.StringIO()
    command.upgrade(alembic_config(url, output), revision, sql=True)
    return output.getvalue()


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def stamp(url: str, revision: str) -> None:
    """Record ``revision`` as applied without running it (a schema created by hand)."""
    command.stamp(alembic_config(url), revision)


def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    return str(revision)


def history() -> list[tuple[str, str | None, str]]:
    """(revision, down_revision, message), newest first."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return [(str(s.revision), _down(s.down_revision), s.doc or "") for s in script.walk_revisions()]


def _down(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return ",".join(str(v) for v in value)  # type: ignore[union-attr]


def current(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from models.db import get_engine

    with get_engine(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def schema_problem(url: str) -> str | None:
    """Why the ihub schema at ``url`` cannot be used by this code, or None when it can."""
    safe = make_url(url).render_as_string(hide_password=True)
    at = current(url)
    if at is None:
        return f"the database at {safe} has no ihub schema: run `ihub db upgrade`"
    expected = head()
    if at != expected:
        return (
            f"the database at {safe} is at revision {at}, this ihub needs {expected}: "
            "run `ihub db upgrade`"
        )
    return None
