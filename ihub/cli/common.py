"""What every ``ihub`` command shares: one-line failures, confirmation, settings, output.

An expected failure is a ``Failure`` (a click exception): one line on stderr, ``error: ...``,
and an exit code, never a traceback. ``IhubGroup`` turns the errors an operator can fix
(a bad config, a database that was never migrated) into such a line for every command.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import IO, Any

import click

from pipeline.errors import ConfigError

NOT_MIGRATED = "the database at {url} has no ihub schema: run `ihub db upgrade`"


class Failure(click.ClickException):
    """An expected failure: printed as ``error: <message>``, exit code 2 unless told."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = code

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class IhubGroup(click.Group):
    """A click group that reports the errors an operator can fix in one line: a bad config or
    environment, a database that is unreachable or not migrated, a broker that does not
    answer, a port in use, a wait that ran out. Anything else is a bug and keeps its
    traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise Failure(str(exc)) from None
        except TimeoutError as exc:
            raise Failure(str(exc), code=1) from None
        except Exception as exc:
            message = operational_problem(exc)
            if message is None:
                raise
            raise Failure(message) from None


def operational_problem(exc: BaseException) -> str | None:
    """One line for an error of the environment, or None when ``exc`` is not one."""
    import errno

    from kombu.exceptions import OperationalError as BrokerDown
    from redis.exceptions import ConnectionError as RedisDown
    from sqlalchemy.exc import InterfaceError, OperationalError

    if not_migrated(exc):
        return NOT_MIGRATED.format(url=_safe_url())
    if isinstance(exc, OperationalError | InterfaceError):
        first = str(exc.orig or exc).strip().splitlines()[0]
        return f"the database at {_safe_url()} failed: {first}"
    if isinstance(exc, BrokerDown | RedisDown):
        return f"the broker did not answer: {exc}"
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return f"cannot listen: {exc.strerror} (choose another --port)"
    return None


def not_migrated(exc: BaseException) -> bool:
    """Whether a database error means "the ihub tables do not exist" (SQLite or Postgres)."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    if not isinstance(exc, OperationalError | ProgrammingError):
        return False
    text = str(exc.orig if exc.orig is not None else exc)
    missing_pg = 'relation "ihub_' in text and "does not exist" in text
    return "no such table: ihub_" in text or missing_pg


def _safe_url() -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings().database_url).render_as_string(hide_password=True)


def fail(message: str, code: int = 2) -> None:
    raise Failure(message, code)


def settings() -> Any:
    from pipeline.settings import settings_from_env

    return settings_from_env()


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render(data)


def yes_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--yes``: skip the confirmation a destructive command asks on a terminal."""
    return click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")(command)


def confirm(question: str, yes: bool) -> None:
    """Ask on a terminal; refuse without a terminal unless ``--yes`` was given.

    A script that pipes into a destructive command must say so: a ``y`` read from a pipe is
    too easy to send by accident.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"{question.rstrip('?')}: refused without a terminal; add --yes to confirm")
    if not click.confirm(question, default=False, err=True):
        fail("cancelled", code=1)


def broker_url(current: Any) -> str | None:
    """The broker to read queue depths from; the embedded one only when it runs (never
    started by a command that only reads)."""
    if current.broker_url:
        return str(current.broker_url)
    from tasks.broker import embedded_broker_url, embedded_running

    return embedded_broker_url(current.home) if embedded_running(current.home) else None


def require_schema(database_url: str) -> None:
    """Refuse to serve or run on a database that is not migrated to this ihub's head."""
    from models.migrate import schema_problem

    problem = schema_problem(database_url)
    if problem:
        fail(problem)
