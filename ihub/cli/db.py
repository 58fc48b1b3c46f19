"""``ihub db ...``: the schema of IHUB_DATABASE_URL, through Alembic."""

from __future__ import annotations

import click

from ihub.cli.common import confirm, fail, settings, yes_option


@click.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.argument("revision", default="head")
@click.option("--sql", is_flag=True, help="print the SQL for a DBA instead (PostgreSQL)")
def db_upgrade(revision: str, sql: bool) -> None:
    """Apply the migrations up to REVISION (default: head)."""
    from models import migrate

    url = settings().database_url
    if sql:
        try:
            click.echo(migrate.upgrade_sql(url, revision), nl=False)
        except ValueError as exc:
            fail(str(exc))
        return
    migrate.upgrade(url, revision)
    click.echo(f"database at revision {migrate.current(url)}")


@db.command("downgrade")
@click.argument("revision")
@yes_option
def db_downgrade(revision: str, yes: bool) -> None:
    """Undo migrations down to REVISION (``base``: drop every ihub table)."""
    from models import migrate

    url = settings().database_url
    confirm(f"downgrade the database to {revision} (data in dropped tables is lost)?", yes)
    migrate.downgrade(url, revision)
    click.echo(f"database at revision {migrate.current(url)}")


@db.command("stamp")
@click.argument("revision")
def db_stamp(revision: str) -> None:
    """Record REVISION as applied without running it (a schema the DBA created by hand)."""
    from models import migrate

    url = settings().database_url
    migrate.stamp(url, revision)
    click.echo(f"database at revision {migrate.current(url)}")


@db.command("current")
def db_current() -> None:
    """The revision the database is at, and whether it is the newest this ihub knows."""
    from models import migrate

    at, head = migrate.current(settings().database_url), migrate.head()
    state = "up to date" if at == head else f"behind: head is {head}, run `ihub db upgrade`"
    click.echo(f"{at or 'none (never migrated)'} ({state})")


@db.command("history")
def db_history() -> None:
    """Every migration, newest first."""
    from models import migrate

    for revision, down, message in migrate.history():
        click.echo(f"{down or '<base>'} -> {revision}: {message}")
