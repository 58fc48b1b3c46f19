"""``ihub dead ...``: operator actions on dead letters."""

from __future__ import annotations

import json
import sys
from typing import Any

import click


def _settings() -> Any:
    from pipeline.settings import settings_from_env

    return settings_from_env()


@click.group()
def dead() -> None:
    """Dead letters: records that could not be written."""


@dead.command("list")
@click.option("--integration", default=None)
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def dead_list(integration: str | None, limit: int, as_json: bool) -> None:
    """The newest dead letters first."""
    from models.queue import list_dead

    rows = list_dead(_settings().database_url, integration=integration, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(
            f"{row['row_id']:>8} {row['last_failed_at']} {row['integration']} "
            f"{row['record_id']} {row['error_class']}: {row['message'][:100]}"
        )
    click.echo(f"{len(rows)} dead letter(s)", err=True)


@dead.command("show")
@click.argument("row_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def dead_show(row_id: int, as_json: bool) -> None:
    """One dead letter with its payload and traceback."""
    from models.queue import show_dead

    row = show_dead(_settings().database_url, row_id)
    if row is None:
        click.echo(f"error: no dead letter for row {row_id}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(row, indent=2))
        return
    for key, value in row.items():
        text = json.dumps(value, indent=2) if isinstance(value, dict | list) else value
        click.echo(f"{key}: {text}")


@dead.command("requeue")
@click.argument("row_ids", nargs=-1, type=int)
@click.option("--integration", default=None, help="every dead letter of this integration")
@click.option("--all", "everything", is_flag=True, help="every dead letter")
@click.option("--dry-run", is_flag=True, help="show what would move, move nothing")
@click.option("--json", "as_json", is_flag=True)
def dead_requeue(
    row_ids: tuple[int, ...],
    integration: str | None,
    everything: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Send dead letters back to the queue (by row id, by integration, or --all)."""
    from models.queue import requeue_dead

    if not (row_ids or integration or everything):
        click.echo("error: name row ids, --integration NAME, or --all", err=True)
        sys.exit(2)
    settings = _settings()
    ids = requeue_dead(
        settings.database_url,
        integration=integration,
        row_ids=list(row_ids) or None,
        everything=everything,
        dry_run=dry_run,
        due_in=settings.reconcile_after,
    )
    if ids and not dry_run:
        from tasks.app import get_app
        from tasks.records import publish_records

        publish_records(get_app(), ids)
    result = {
        "requeued": 0 if dry_run else len(ids),
        "would_requeue": len(ids) if dry_run else 0,
        "row_ids": ids,
    }
    if as_json:
        click.echo(json.dumps(result))
    else:
        verb = "would requeue" if dry_run else "requeued"
        click.echo(f"{verb} {len(ids)} record(s)")
