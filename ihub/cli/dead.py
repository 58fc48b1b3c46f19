"""``ihub dead ...``: operator actions on dead letters (list, show, requeue, purge, history).

The selection options are shared by every command. A requeue or a purge needs row ids, a
filter or ``--all``; every one is written to the action log (``ihub dead history``) with who
ran it. ``--json`` everywhere.
"""

from __future__ import annotations

import functools
import getpass
import json
import re
import socket
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import click

REASONS = ("transient", "permanent", "crash")
_SPAN = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _settings() -> Any:
    from pipeline.settings import settings_from_env

    return settings_from_env()


def _actor() -> str:
    """Who runs the command: IHUB_ACTOR, or user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return _settings().actor or f"{user}@{socket.gethostname()}"


def parse_span(text: str) -> timedelta:
    """``90``, ``45s``, ``30m``, ``12h``, ``7d``, ``2w``."""
    match = _SPAN.match(text.strip().lower())
    if not match:
        raise click.BadParameter(f"expected a duration such as 30m, 12h or 7d, got {text!r}")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_when(text: str) -> datetime:
    """An ISO time (UTC unless it says otherwise) or a duration ago (``2h``)."""
    from pipeline.timefmt import utcnow

    if _SPAN.match(text.strip().lower()):
        return utcnow() - parse_span(text)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"expected an ISO time or a duration ago, got {text!r}") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def selection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The filters every dead-letter command takes, turned into a ``Selection``."""
    options = [
        click.option("--integration", default=None),
        click.option("--error-class", default=None, help="e.g. PermanentError, WorkerLost"),
        click.option("--message", default=None, help="text the message contains (any case)"),
        click.option("--since", default=None, help="last failure at or after: ISO time or 2h"),
        click.option("--until", default=None, help="last failure before: ISO time or 30m"),
        click.option("--reason", "reasons", multiple=True, type=click.Choice(REASONS)),
        click.option("--requeued-fewer-than", type=int, default=None),
    ]
    for option in reversed(options):
        command = option(command)

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        from models.deadletters import Selection

        since, until = kwargs.pop("since"), kwargs.pop("until")
        kwargs["selection"] = Selection(
            integration=kwargs.pop("integration"),
            error_class=kwargs.pop("error_class"),
            message=kwargs.pop("message"),
            since=parse_when(since) if since else None,
            until=parse_when(until) if until else None,
            reasons=tuple(kwargs.pop("reasons")),
            requeued_fewer_than=kwargs.pop("requeued_fewer_than"),
            row_ids=tuple(kwargs.pop("row_ids", ())),
            everything=kwargs.pop("everything", False),
        )
        return command(**kwargs)

    return wrapper


def _need_selection(selection: Any) -> None:
    if selection.empty:
        click.echo("error: name row ids, a filter (--integration ...), or --all", err=True)
        sys.exit(2)


def _emit(data: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else text)


@click.group()
def dead() -> None:
    """Dead letters: records that could not be written."""


@dead.command("list")
@click.argument("row_ids", nargs=-1, type=int)
@selection_options
@click.option("--limit", default=100, show_default=True)
@click.option("--offset", default=0)
@click.option("--json", "as_json", is_flag=True)
def dead_list(selection: Any, limit: int, offset: int, as_json: bool) -> None:
    """The newest dead letters first (every one when no filter is given)."""
    from dataclasses import replace

    from models.deadletters import list_letters

    if selection.empty:
        selection = replace(selection, everything=True)
    rows = list_letters(_settings().database_url, selection, limit=limit, offset=offset)
    lines = [
        f"{r['row_id']:>8} {r['last_failed_at']} {r['integration']} {r['record_id']} "
        f"[{r['reason']}] {r['error_class']}: {r['message'][:100]}"
        for r in rows
    ]
    _emit(rows, as_json, "\n".join([*lines, f"{len(rows)} dead letter(s)"]))


@dead.command("show")
@click.argument("row_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def dead_show(row_id: int, as_json: bool) -> None:
    """One dead letter: payload (secrets masked), traceback, attempts, requeues."""
    from ihub.report import dead_letter

    row = dead_letter(_settings().database_url, row_id)
    if row is None:
        click.echo(f"error: no dead letter for row {row_id}", err=True)
        sys.exit(1)
    lines = [
        f"{key}: {json.dumps(value, indent=2) if isinstance(value, dict | list) else value}"
        for key, value in row.items()
    ]
    _emit(row, as_json, "\n".join(lines))


@dead.command("requeue")
@click.argument("row_ids", nargs=-1, type=int)
@selection_options
@click.option("--all", "everything", is_flag=True, help="every dead letter")
@click.option("--dry-run", is_flag=True, help="show what would move, move nothing")
@click.option("--rate", default=50.0, show_default=True, help="records published a second")
@click.option("--batch", default=100, show_default=True, help="records per transaction")
@click.option("--json", "as_json", is_flag=True)
def dead_requeue(selection: Any, dry_run: bool, rate: float, batch: int, as_json: bool) -> None:
    """Send dead letters back to the workers, rate-limited; the current transform and mapping
    run on the stored source record, so a fix made since applies."""
    from models.deadletters import requeue
    from tasks.app import get_app
    from tasks.records import publish_records

    _need_selection(selection)
    settings = _settings()
    result = requeue(
        settings.database_url,
        selection,
        actor=_actor(),
        publish=lambda ids: publish_records(get_app(), ids),
        dry_run=dry_run,
        rate=rate if rate > 0 else None,
        batch=batch,
        due_in=settings.reconcile_after,
    )
    verb = "would requeue" if dry_run else "requeued"
    _emit(result.as_dict(), as_json, f"{verb} {len(result.row_ids)} record(s)")


@dead.command("purge")
@selection_options
@click.option("--older-than", required=True, help="last failure older than: 30d, 12h, ...")
@click.option("--all", "everything", is_flag=True, help="no other filter: every integration")
@click.option("--dry-run", is_flag=True, help="count what would go, delete nothing")
@click.option("--json", "as_json", is_flag=True)
def dead_purge(selection: Any, older_than: str, dry_run: bool, as_json: bool) -> None:
    """Delete old dead letters (retention); requeued ones are history and go as well."""
    from models.deadletters import purge

    _need_selection(selection)
    count = purge(
        _settings().database_url,
        older_than=parse_span(older_than),
        selection=selection,
        actor=_actor(),
        dry_run=dry_run,
    )
    verb = "would purge" if dry_run else "purged"
    _emit(
        {"purged": 0 if dry_run else count, "would_purge": count if dry_run else 0},
        as_json,
        f"{verb} {count} dead letter(s)",
    )


@dead.command("history")
@click.option("--limit", default=50, show_default=True)
@click.option("--action", type=click.Choice(("requeue", "redrive", "purge")), default=None)
@click.option("--json", "as_json", is_flag=True)
def dead_history(limit: int, action: str | None, as_json: bool) -> None:
    """Every requeue, redrive and purge: when, who, what was selected, how many."""
    from models.deadletters import actions

    rows = actions(_settings().database_url, limit=limit, action=action)
    lines = [
        f"{a['at']} {a['action']:<8} {a['count']:>6} by {a['actor']}: "
        f"{json.dumps(a['selection'], sort_keys=True)}"
        for a in rows
    ]
    _emit(rows, as_json, "\n".join(lines) or "no requeue, redrive or purge yet")
