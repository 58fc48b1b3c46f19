"""The ``ihub`` command: thin click commands over the models and engine functions.

Each command group lives in its own module; ``common`` holds what they share (one-line
failures, confirmation, settings). Expected failures print ``error: ...`` and exit non-zero,
never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import click

from ihub.cli.auth import auth
from ihub.cli.common import IhubGroup, broker_url, emit, require_schema, settings
from ihub.cli.db import db
from ihub.cli.dead import dead
from ihub.cli.demo import demo
from ihub.cli.services import beat, flower, stop, worker
from ihub.cli.sync import sync
from ihub.cli.watermark import watermark
from pipeline.errors import ConfigError


def _version() -> str:
    try:
        return version("ihub")
    except PackageNotFoundError:  # a checkout run without `pip install -e .`
        return "unknown"


@click.group(cls=IhubGroup)
@click.version_option(_version(), "--version", "-V", prog_name="ihub")
def main() -> None:
    """ihub: keep a target in step with an OAuth 2.0 REST API, on Celery."""
    import logging

    from models.redaction import install_redaction

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    install_redaction()
    _learn_config_secrets()


def _learn_config_secrets() -> None:
    """What the config holds (headers, URL passwords...) is masked in whatever a command
    prints from the database: dead letters, run errors, token failures."""
    from ihub.report import register_config_secrets

    # a broken environment is reported by the command that needs it
    with contextlib.suppress(ConfigError):
        register_config_secrets(settings().config_path)


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
    """Validate the config as the workers and beat will, and print it with secrets masked."""
    import yaml

    from pipeline.config import masked
    from tasks.schedule import load_checked_config

    config = load_checked_config(path)
    click.echo(yaml.safe_dump(masked(config), sort_keys=False))
    _warn_secret_key(config)
    click.echo(f"ok: {len(config.integrations)} integration(s) in {path}", err=True)


def _warn_secret_key(config: Any) -> None:
    """OAuth tokens will be stored: say now if IHUB_SECRET_KEY would be refused then."""
    from pipeline.auth.crypto import check_key

    if "'type': 'oauth2'" not in str(config.model_dump(mode="json")):
        return
    try:
        check_key(settings().secret_key)
    except ConfigError as exc:
        click.echo(f"warning: {exc}", err=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="not loopback: needs auth")
@click.option("--port", default=8780, show_default=True)
@click.option("--flower-url", default=None, help="link Flower [default: IHUB_FLOWER_URL]")
def web(host: str, port: int, flower_url: str | None) -> None:
    """Serve the status page, its JSON API and /metrics (waitress, bounded threads and timeouts).

    Bound to anything but loopback it needs IHUB_WEB_USER and IHUB_WEB_PASSWORD (HTTP Basic).
    Requests must name this host: its address, or a name in IHUB_WEB_PUBLIC_HOST.
    """
    from ihub.report import register_config_secrets
    from ihub.web import server

    current = settings()
    register_config_secrets(current.config_path)
    env = dict(os.environ)
    auth = server.auth_from_env(env)  # a ConfigError is one line (IhubGroup)
    server.check_exposure(host, auth)
    options: dict[str, Any] = {
        "flower_url": flower_url or current.flower_url,
        "auth": auth,
        "limits": server.limits_from_env(env),
        "public_hosts": server.public_hosts_from_env(env),
        "due_in": current.reconcile_after,
    }
    require_schema(current.database_url)
    if current.secret_key:  # every `ihub web` process accepts the others' CSRF tokens
        options["csrf_key"] = server.csrf_key_from_secret(current.secret_key)
    click.echo(f"status page on http://{host}:{port}/", err=True)
    url = current.database_url
    server.serve_forever(url, broker_url(current), host=host, port=port, **options)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="the same document as /api/status")
@click.option("--hours", default=24.0, show_default=True, help="window for rates and times")
@click.option("--check", "check_health", is_flag=True, help="exit 1 if one is failing or paused")
def status(as_json: bool, hours: float, check_health: bool) -> None:
    """Per integration: state, last success, watermark lag, tokens, records; and the widgets.

    With --check, exits 1 when an integration is failing or paused (for cron and monitoring).
    """
    from ihub.report import collect_status

    current = settings()
    require_schema(current.database_url)
    report = collect_status(current.database_url, broker_url(current), hours=hours)
    emit(report, as_json, _render_status)
    unhealthy = [f"{i['name']} {i['state']}" for i in report["integrations"] if _unhealthy(i)]
    if check_health and unhealthy:
        click.echo(f"unhealthy: {', '.join(unhealthy)}", err=True)
        sys.exit(1)


def _unhealthy(integration: dict[str, Any]) -> bool:
    return integration["state"] in ("failing", "paused")


def _render_status(report: dict[str, Any]) -> None:
    from ihub.report import render_text

    for line in render_text(report):
        click.echo(line)
    current = settings()
    if not current.broker_url:
        from tasks.broker import embedded_running

        running = embedded_running(current.home)
        click.echo(
            f"embedded broker: {'running (stop it with `ihub stop`)' if running else 'stopped'}"
        )


for _command in (db, worker, beat, flower, stop, sync, dead, auth, demo, watermark):
    main.add_command(_command)
