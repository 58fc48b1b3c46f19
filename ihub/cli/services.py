"""``ihub worker|beat|flower|stop``: Celery's own processes, started only on a config and a
database they can run on."""

from __future__ import annotations

import os

import click

from ihub.cli.common import fail, require_schema, settings

_PASSTHROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def ready_to_run() -> None:
    """The checks the Celery app makes, made before exec so that they fail in one line: the
    config as ``ihub check`` judges it, and a migrated database."""
    from tasks.app import checked_config

    current = settings()
    checked_config(current.config_path)
    require_schema(current.database_url)


def _exec_celery(kind: str, args: list[str]) -> None:
    from ihub.cli.runner import celery_command

    command = celery_command(kind, args)
    os.execv(command[0], command)


@click.command(context_settings=_PASSTHROUGH)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: tuple[str, ...]) -> None:
    """Run a worker; Celery's own options pass through (--concurrency, --hostname, -Q ...)."""
    ready_to_run()
    args = list(celery_args)
    if not any(a.startswith(("-l", "--loglevel")) for a in args):
        args += ["--loglevel", "INFO"]
    _exec_celery("worker", args)


@click.command(context_settings=_PASSTHROUGH)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(celery_args: tuple[str, ...]) -> None:
    """Run the scheduler (exactly one per deployment); Celery's options pass through."""
    ready_to_run()
    current = settings()
    current.home.mkdir(parents=True, exist_ok=True)
    args = ["--schedule", str(current.home / "celerybeat-schedule"), *celery_args]
    _exec_celery("beat", args)


@click.command(context_settings=_PASSTHROUGH)
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(flower_args: tuple[str, ...]) -> None:
    """Run Flower against the same broker (in-memory history, capped; 127.0.0.1 by default).

    Any other --address needs --basic-auth=user:password or IHUB_FLOWER_BASIC_AUTH.
    """
    from ihub.cli.flower import prepare

    args, env = prepare(flower_args, os.environ)  # a ConfigError is one line (IhubGroup)
    os.environ.update(env)
    current = settings()
    if not current.broker_url:
        from tasks.broker import start_embedded

        start_embedded(current.home)
    _exec_celery("flower", args)


@click.command()
def stop() -> None:
    """Stop the embedded broker (the default when IHUB_BROKER_URL is unset).

    Messages still queued in it are lost; the reconciler republishes their rows from the
    database once they are overdue.
    """
    from tasks.broker import stop_embedded

    current = settings()
    if current.broker_url:
        fail("IHUB_BROKER_URL is set: there is no embedded broker to stop")
    stopped = stop_embedded(current.home)
    click.echo("embedded broker stopped" if stopped else "embedded broker was not running")
