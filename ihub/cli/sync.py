"""``ihub sync NAME``: fetch in this process, waiting behind a running fetch; records go to the
workers. Every expected failure is one line (or a JSON document) and an exit code of its own."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from pipeline.errors import ConfigError


@click.command()
@click.argument("name")
@click.option(
    "--wait",
    is_flag=True,
    help="wait behind a running fetch, run until caught up, and block until every record "
    "is done or dead",
)
@click.option("--timeout", default=3600.0, show_default=True, help="seconds --wait waits")
@click.option("--json", "as_json", is_flag=True)
def sync(name: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Fetch one delta of NAME now; the records go to the workers.

    Exit codes: 0 ok, 1 refused by the source, 2 usage or config, 3 busy, 4 source
    unavailable, 5 credential refused, 6 records still open at --timeout.
    """
    run_sync(name, wait=wait, timeout=timeout, as_json=as_json)


def run_sync(
    name: str, *, wait: bool, timeout: float, as_json: bool, full_refresh: bool = False
) -> None:
    """A fetch in this process (``ihub sync``, ``ihub watermark refresh``); exit codes in
    ``ihub.cli.syncing``."""
    from ihub.cli.syncing import OPEN, USAGE, sync_now, wait_for_runs
    from pipeline.hub import Hub
    from tasks.app import get_app
    from tasks.records import publisher

    started = time.monotonic()
    try:
        hub = Hub.from_env()
        hub.integration(name)
    except ConfigError as exc:
        _sync_exit({"integration": name, "status": "config", "error": str(exc)}, USAGE, as_json)
    app = get_app()
    publish = publisher(app, hub, name)  # one task per row, or per chunk in batched mode
    outcome = sync_now(hub, name, publish, wait=wait, timeout=timeout, full_refresh=full_refresh)
    if outcome.more and not wait:
        _continue_in_workers(app, name)
    data = outcome.as_dict()
    if wait and outcome.exit_code == 0 and outcome.runs:
        left = max(0.0, timeout - (time.monotonic() - started))
        try:
            data["counts"] = wait_for_runs(hub.database_url, outcome.runs, timeout=left)
        except TimeoutError as exc:
            data |= {"status": "open", "error": str(exc), "exit_code": OPEN}
    _sync_exit(data, int(data["exit_code"]), as_json)


def _continue_in_workers(app: Any, name: str) -> None:
    """The run ended by its budget: the next one goes to the workers at once."""
    try:
        app.tasks["ihub.fetch_delta"].apply_async((name,))
    except Exception as exc:  # the broker is down: beat's next tick continues
        click.echo(f"warning: could not queue the next run ({type(exc).__name__})", err=True)


def _sync_exit(data: dict[str, Any], code: int, as_json: bool) -> None:
    data["exit_code"] = code
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    elif code == 0:
        shown = {k: v for k, v in data.items() if k not in ("error", "exit_code")}
        click.echo(" ".join(f"{k}={v}" for k, v in shown.items()))
    else:
        click.echo(f"error: {data['status']}: {data['error']} (exit {code})", err=True)
    sys.exit(code)
