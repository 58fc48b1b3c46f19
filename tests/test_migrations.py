"""The schema through Alembic: models and migrations agree, `ihub db ...` works the usual way,
and a database that was never migrated answers "run `ihub db upgrade`", never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ihub.cli import main
from models import migrate

UPGRADE_HINT = "has no ihub schema: run `ihub db upgrade`"


def schema_diff(url: str) -> list[object]:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from models.db import get_engine
    from models.schema import Base

    with get_engine(url).connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


def test_models_and_migrations_agree_on_sqlite(sqlite_url: str) -> None:
    """Autogenerate finds nothing to add or change after `upgrade head` on SQLite."""
    assert schema_diff(sqlite_url) == []


@pytest.mark.services
def test_models_and_migrations_agree_on_postgres(pg_url: str) -> None:
    """Autogenerate finds nothing to add or change after `upgrade head` on PostgreSQL."""
    assert schema_diff(pg_url) == []


@pytest.fixture
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A directory where nothing was ever migrated, its config valid."""
    config = tmp_path / "integrations.yaml"
    config.write_text("integrations: {}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IHUB_HOME", str(tmp_path / ".ihub"))
    monkeypatch.setenv("IHUB_CONFIG", str(config))
    monkeypatch.delenv("IHUB_DATABASE_URL", raising=False)
    monkeypatch.setenv("IHUB_BROKER_URL", "redis://127.0.0.1:1/0")  # never reached
    return f"sqlite:///{tmp_path / '.ihub' / 'ihub.db'}"


@pytest.mark.parametrize(
    "args",
    [["web", "--port", "0"], ["status"], ["worker"], ["beat"], ["dead", "list"]],
    ids=["web", "status", "worker", "beat", "dead_list"],
)
def test_unmigrated_database_says_run_upgrade(
    fresh: str, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    """On a fresh directory each command answers "run `ihub db upgrade`" in one line, exit 2."""
    import os

    def no_exec(*_: object) -> None:
        raise AssertionError("celery must not start")

    monkeypatch.setattr(os, "execv", no_exec)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert UPGRADE_HINT in result.output and result.output.count("\n") == 1, result.output


def test_upgrade_then_status_works(fresh: str) -> None:
    """After `ihub db upgrade` the same fresh directory reports status and is up to date."""
    assert CliRunner().invoke(main, ["db", "upgrade"]).exit_code == 0
    assert CliRunner().invoke(main, ["status"]).exit_code == 0
    current = CliRunner().invoke(main, ["db", "current"])
    assert current.output == f"{migrate.head()} (up to date)\n"


def test_behind_database_names_both_revisions(fresh: str) -> None:
    """A database one migration behind is refused with its revision and the head."""
    migrate.upgrade(fresh, "0001")
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 2
    assert f"is at revision 0001, this ihub needs {migrate.head()}" in result.output


@pytest.mark.services
def test_db_commands_on_postgres(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """downgrade (confirmed), current, history, stamp and offline `upgrade --sql` on Postgres."""
    monkeypatch.setenv("IHUB_DATABASE_URL", pg_url)
    run = CliRunner().invoke
    assert run(main, ["db", "downgrade", "base"]).exit_code == 2  # no terminal, no --yes
    assert migrate.current(pg_url) == migrate.head()
    assert run(main, ["db", "downgrade", "base", "--yes"]).exit_code == 0
    assert run(main, ["db", "current"]).output.startswith("none (never migrated)")
    assert UPGRADE_HINT in run(main, ["status"]).output
    sql = run(main, ["db", "upgrade", "--sql"])
    assert sql.exit_code == 0 and "CREATE TABLE ihub_records" in sql.output
    assert f"UPDATE alembic_version SET version_num='{migrate.head()}'" in sql.output
    assert migrate.current(pg_url) is None  # offline: nothing was applied
    history = run(main, ["db", "history"]).output.splitlines()
    assert history[-1].startswith("<base> -> 0001") and len(history) >= 2
    assert run(main, ["db", "upgrade", "0001"]).output == "database at revision 0001\n"
    assert run(main, ["db", "stamp", "head"]).exit_code == 0
    assert migrate.current(pg_url) == migrate.head()


def test_offline_sql_is_refused_on_sqlite(fresh: str) -> None:
    """`ihub db upgrade --sql` on SQLite says why in one line instead of half a script."""
    result = CliRunner().invoke(main, ["db", "upgrade", "--sql"])
    assert result.exit_code == 2 and "written for PostgreSQL" in result.output


@pytest.mark.slow
def test_celery_worker_on_an_unmigrated_database_stops_with_the_fix(fresh: str) -> None:
    """`celery -A tasks worker` (not through ihub) exits non-zero saying "run `ihub db
    upgrade`" instead of failing every task."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool", "solo"],
        cwd=repo,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode != 0
    assert UPGRADE_HINT in result.stderr, result.stderr[-2000:]
