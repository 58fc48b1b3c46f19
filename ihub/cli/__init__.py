"""The ``ihub`` command: thin click commands over the models and engine functions."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from pipeline.errors import ConfigError


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _settings() -> Any:
    from pipeline.settings import settings_from_env

    return settings_from_env()


def _emit(data: Any, as_json: bool, render: Any) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render(data)


@click.group()
def main() -> None:
    """ihub: keep a target in step with an OAuth 2.0 REST API, on Celery."""
    import logging

    from pipeline.redaction import install_redaction

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    install_redaction()


@main.command()
@click.option(
    "--config",
    "path",
    envvar="IHUB_CONFIG",
    default="integrations.yaml",
    show_default=True,
    help="integration definitions",
)
def check(path: str) -> None:
    """Validate the config and print it with secrets masked."""
    import yaml

    from pipeline.config import load_config, masked

    try:
        config = load_config(path)
    except ConfigError as exc:
        _fail(str(exc))
    click.echo(yaml.safe_dump(masked(config), sort_keys=False))
    click.echo(f"ok: {len(config.integrations)} integration(s) in {path}", err=True)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply the migrations to IHUB_DATABASE_URL (SQLite or Postgres)."""
    from models.migrate import current, upgrade

    settings = _settings()
    upgrade(settings.database_url)
    click.echo(f"database at revision {current(settings.database_url)}")


_PASSTHROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def _exec_celery(kind: str, args: list[str]) -> None:
    from ihub.cli.runner import celery_command

    command = celery_command(kind, args)
    os.execv(command[0], command)


@main.command(context_settings=_PASSTHROUGH)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: tuple[str, ...]) -> None:
    """Run a worker; Celery's own options pass through (--concurrency, --hostname, -Q ...)."""
    args = list(celery_args)
    if not any(a.startswith(("-l", "--loglevel")) for a in args):
        args += ["--loglevel", "INFO"]
    _exec_celery("worker", args)


@main.command(context_settings=_PASSTHROUGH)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(celery_args: tuple[str, ...]) -> None:
    """Run the scheduler (exactly one per deployment); Celery's options pass through."""
    settings = _settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    args = ["--schedule", str(settings.home / "celerybeat-schedule"), *celery_args]
    _exec_celery("beat", args)


@main.command(context_settings=_PASSTHROUGH)
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(flower_args: tuple[str, ...]) -> None:
    """Run Flower against the same broker (in-memory history, capped; 127.0.0.1 by default).

    Any other --address needs --basic-auth=user:password or IHUB_FLOWER_BASIC_AUTH.
    """
    from ihub.cli.flower import prepare

    try:
        args, env = prepare(flower_args, os.environ)
    except ConfigError as exc:
        _fail(str(exc))
    os.environ.update(env)
    _exec_celery("flower", args)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="not loopback: needs auth")
@click.option("--port", default=8780, show_default=True)
@click.option("--flower-url", envvar="IHUB_FLOWER_URL", default=None, help="link Flower")
def web(host: str, port: int, flower_url: str | None) -> None:
    """Serve the status page, its JSON API and /metrics.

    Bound to anything but loopback it needs IHUB_WEB_USER and IHUB_WEB_PASSWORD (HTTP Basic).
    """
    from ihub.report import register_config_secrets
    from ihub.web.server import auth_from_env, check_exposure, csrf_key_from_secret, serve_forever

    settings = _settings()
    register_config_secrets(settings.config_path)
    try:
        auth = auth_from_env(dict(os.environ))
        check_exposure(host, auth)
    except ConfigError as exc:
        _fail(str(exc))
    options: dict[str, Any] = {"flower_url": flower_url, "auth": auth}
    options["due_in"] = settings.reconcile_after
    if settings.secret_key:  # every `ihub web` process accepts the others' CSRF tokens
        options["csrf_key"] = csrf_key_from_secret(settings.secret_key)
    click.echo(f"status page on http://{host}:{port}/", err=True)
    serve_forever(settings.database_url, _broker_url(settings), host=host, port=port, **options)


def _broker_url(settings: Any) -> str | None:
    if settings.broker_url:
        return str(settings.broker_url)
    from tasks.broker import SOCKET

    socket = settings.home / SOCKET
    return f"redis+socket://{socket}" if socket.exists() else None


@main.command()
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
    from tasks.records import publisher

    try:
        hub = Hub.from_env()
        hub.integration(name)
    except ConfigError as exc:
        _fail(str(exc))
    app = get_app()
    result = engine.fetch_delta(
        hub,
        name,
        publisher(app, hub, name),
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
    _emit(data, as_json, lambda d: click.echo(" ".join(f"{k}={v}" for k, v in d.items())))
    if result.status != "ok":
        sys.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="the same document as /api/status")
@click.option("--hours", default=24.0, show_default=True, help="window for rates and times")
def status(as_json: bool, hours: float) -> None:
    """Per integration: state, last success, watermark lag, tokens, records; and the widgets."""
    from ihub.report import collect_status

    settings = _settings()
    report = collect_status(settings.database_url, _broker_url(settings), hours=hours)
    _emit(report, as_json, _render_status)


def _render_status(report: dict[str, Any]) -> None:
    from ihub.report import render_text

    for line in render_text(report):
        click.echo(line)


from ihub.cli.auth import auth  # noqa: E402  (subcommand groups live in their own modules)
from ihub.cli.dead import dead  # noqa: E402
from ihub.cli.demo import demo  # noqa: E402
from ihub.cli.watermark import watermark  # noqa: E402

main.add_command(dead)
main.add_command(auth)
main.add_command(demo)
main.add_command(watermark)
