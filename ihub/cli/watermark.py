"""``ihub watermark ...``: where an integration's delta stands, backfills, full refreshes.

``reset`` moves the watermark without comparing: a fetch running meanwhile finds it moved at its
next page (compare-and-set) and stops, and the next fetch starts from the new place.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from ihub.cli.common import confirm, settings, yes_option


def _context(name: str) -> tuple[str, Any]:
    """The database URL and the integration's config (a ConfigError is one line: IhubGroup)."""
    from pipeline.config import load_config

    current = settings()
    return current.database_url, load_config(current.config_path).get(name)


def parse_moment(text: str) -> datetime:
    """ISO 8601 (UTC unless it says otherwise), ``YYYY-MM-DD HH:MM:SS`` or epoch seconds."""
    from pipeline.timefmt import parse_time

    raw = text.strip()
    try:
        if raw.isdigit():
            return parse_time(raw, "epoch")
        return parse_time(raw, "iso")
    except (ValueError, OverflowError):
        raise click.BadParameter(
            f"expected an ISO time, 'YYYY-MM-DD HH:MM:SS' or epoch seconds, got {text!r}"
        ) from None


def _describe(url: str, name: str, config: Any) -> dict[str, Any]:
    from models import integrations, runs
    from pipeline.delta import lower_bound
    from pipeline.timefmt import version_string

    mark = integrations.watermark(url, name)
    lookback = config.source.delta.lookback
    since = lower_bound(mark, timedelta(seconds=lookback))
    return {
        "integration": name,
        "watermark": {"updated": mark.to_text()[0], "id": mark.id} if mark else None,
        "next_fetch_from": version_string(since) if since else None,
        "lookback_seconds": lookback,
        "last_run": runs.latest(url, name),
    }


def _render(data: dict[str, Any]) -> str:
    mark = data["watermark"]
    lines = [
        f"{data['integration']}: watermark "
        + (f"{mark['updated']} id={mark['id'] or '-'}" if mark else "none (next fetch: full load)")
    ]
    if data["next_fetch_from"]:
        lines.append(
            f"next fetch reads from {data['next_fetch_from']} "
            f"(lookback {data['lookback_seconds']:g} s)"
        )
    run = data["last_run"]
    if run:
        lines.append(
            f"last fetch: run {run['id']} {run['status']}, {run['pages']} pages, "
            f"{run['fetched']} fetched, {run['staged']} staged, started {run['started_at']}"
        )
    return "\n".join(lines)


@click.group()
def watermark() -> None:
    """The delta watermark: show it, move it for a backfill, or reload everything."""


@watermark.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def watermark_show(name: str, as_json: bool) -> None:
    """The last (updated, id) staged, where the next fetch starts, and the latest fetch."""
    url, config = _context(name)
    data = _describe(url, name, config)
    click.echo(json.dumps(data, indent=2, default=str) if as_json else _render(data))


@watermark.command("reset")
@click.argument("name")
@click.option("--to", "to", default=None, help="new watermark; default: none (a full load)")
@click.option("--json", "as_json", is_flag=True)
@yes_option
def watermark_reset(name: str, to: str | None, as_json: bool, yes: bool) -> None:
    """Move the watermark of NAME to TIME (a backfill from there), or clear it.

    Records already staged are not staged again unless they changed: the sink sees each
    version once. To rewrite every row, use ``ihub watermark refresh``.
    """
    from models import integrations
    from pipeline.delta import Watermark

    url, config = _context(name)
    before = _describe(url, name, config)["watermark"]
    moment = parse_moment(to).astimezone(UTC) if to else None
    confirm(f"move the watermark of {name} to {to or 'none (a full load)'}?", yes)
    integrations.set_watermark(url, name, Watermark(moment, "") if moment else None)
    after = _describe(url, name, config)
    if as_json:
        click.echo(json.dumps({**after, "previous": before}, indent=2, default=str))
        return
    was = f"{before['updated']} id={before['id'] or '-'}" if before else "none"
    click.echo(f"was: {was}\n{_render(after)}")


@watermark.command("refresh")
@click.argument("name")
@click.option("--wait", is_flag=True, help="block until every record of the run is done or dead")
@click.option("--timeout", default=3600.0, show_default=True, help="seconds --wait waits")
@click.option("--json", "as_json", is_flag=True)
def watermark_refresh(name: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Full refresh of NAME now: read everything and rewrite every row (one per key)."""
    from ihub.cli.sync import run_sync

    run_sync(name, wait=wait, timeout=timeout, as_json=as_json, full_refresh=True)
