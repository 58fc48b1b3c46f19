"""``ihub sync NAME``: one fetch in this process; its records go to the workers."""

from __future__ import annotations

import sys
from typing import Any

import click

from ihub.cli.common import emit


@click.command()
@click.argument("name")
@click.option("--wait", is_flag=True, help="block until every record of this run is done or dead")
@click.option("--timeout", default=3600.0, show_default=True, help="seconds --wait waits")
@click.option("--json", "as_json", is_flag=True)
def sync(name: str, wait: bool, timeout: float, as_json: bool) -> None:
    """Fetch one delta of NAME now; the records go to the workers."""
    run_sync(name, wait=wait, timeout=timeout, as_json=as_json)


def run_sync(
    name: str, *, wait: bool, timeout: float, as_json: bool, full_refresh: bool = False
) -> None:
    """One fetch in this process (``ihub sync``, ``ihub watermark refresh``); exit 1 unless ok."""
    from ihub.cli.runner import wait_for_run
    from pipeline import sync as engine
    from pipeline.hub import Hub
    from tasks.app import get_app
    from tasks.records import publish_records

    hub = Hub.from_env()  # a ConfigError becomes one line (IhubGroup)
    hub.integration(name)
    app = get_app()
    result = engine.fetch_delta(
        hub,
        name,
        lambda ids: publish_records(app, ids),
        owner="cli-refresh" if full_refresh else "cli",
        full_refresh=full_refresh,
    )
    data: dict[str, Any] = {
        "integration": name,
        "status": result.status,
        "run_id": result.run_id,
        "pages": result.pages,
        "fetched": result.fetched,
        "staged": result.staged,
    }
    if wait and result.run_id is not None:
        data["counts"] = wait_for_run(hub.database_url, result.run_id, timeout=timeout)
    emit(data, as_json, lambda d: click.echo(" ".join(f"{k}={v}" for k, v in d.items())))
    if result.status != "ok":
        sys.exit(1)
