"""Named prepared statements for ihub's own statements on a record's path (Postgres).

Sent as text, a statement is parsed, analysed and planned at each execution, and for the
statements every record sends (the claim; the done mark with its rollup, three
data-modifying parts) that is much of the server's work (bench/README.md, "What a round trip
to Postgres costs here"). ``send`` prepares each statement once per connection, in the same
query string as its first ``EXECUTE``, so preparing costs no round trip of its own. What a
connection has prepared is kept with it (``models.driver``). A server that lost them
(``DISCARD ALL``, a pooler handing the session to another client) answers "does not exist":
the statements are prepared again and the query string, which ran as one transaction and was
rolled back whole, is sent once more.

Prepared statements run their generic plans: the session that prepares them is set to
``plan_cache_mode = force_generic_plan`` in the same query string. Left to choose, the server
planned the done mark afresh at every execution, as its generic plan's estimate for ``id =
ANY($1)`` (ten rows) never beat the custom plans' (one): about a third of a record's server
CPU (bench/README.md, twelfth sitting). Every prepared statement finds its rows by primary
key, which the generic plan does as well as a custom one.

``IHUB_PG_PREPARE=0`` (``use(False)``, which the hub calls with its setting) turns it off,
for a transaction-pooling PgBouncer, which does not keep a session's prepared statements: the
statements are then sent as text in the same query strings.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2

from models import driver
from models.driver import DriverConnection

# invalid_sql_statement_name, duplicate_prepared_statement, "cached plan must not change result
# type": what the server holds differs from what this connection believes; prepare again
LOST = {"26000", "42P05", "0A000"}
GENERIC_PLANS = "SET plan_cache_mode = force_generic_plan"
GENERIC_PLANS_SINCE = 120000  # the setting's server version (PostgreSQL 12)
_PLACEHOLDER = re.compile(r"%\(([^)]+)\)s")


@dataclass(frozen=True)
class Statement:
    """One statement as psycopg2 SQL (``%(name)s`` placeholders) with its parameters.
    ``types`` names a parameter's SQL type where the statement's context cannot tell it
    (a parameter in a SELECT list, say); the others take the type their use implies, once,
    when the statement is prepared. So only statements on ihub's own tables are prepared: a
    sink table's columns are its owner's to alter, and a parameter typed by yesterday's
    column would coerce today's value to it (a float cut to the integer the column was)."""

    sql: str
    params: Mapping[str, Any]
    types: Mapping[str, str] | None = None
    prepare: bool = True  # False: sent as text in the same query string


_enabled = [True]


def use(enabled: bool) -> None:
    """Prepare statements in this process (the default), or send them as text."""
    _enabled[0] = enabled


def enabled() -> bool:
    return _enabled[0]


@dataclass(frozen=True)
class Sent:
    """What the last statement of a query string gave: its row count and first row."""

    rowcount: int
    row: tuple[Any, ...] | None


def send(connection: DriverConnection, statements: Sequence[Statement], prefix: str = "") -> Sent:
    """Run ``statements`` (after ``prefix``, plain SQL such as a ``SET LOCAL``) in one query
    string on ``connection`` (``models.driver``): one round trip, one transaction. The result
    is the last statement's."""
    if not enabled():
        parts = [prefix] if prefix else []
        sql = ";\n".join([*parts, *(statement.sql for statement in statements)])
        return _execute(connection, sql, _merged(statements))
    generic = connection.raw.server_version >= GENERIC_PLANS_SINCE
    for attempt in (1, 2):
        sql, names = _query(statements, prefix, connection.prepared, generic=generic)
        try:
            sent = _execute(connection, sql, _merged(statements))
        except psycopg2.Error as exc:
            if driver.is_lost(connection, exc):
                raise  # the server session is gone, and its statements with it
            _forget(connection)
            if attempt == 2 or exc.pgcode not in LOST:
                raise
            continue
        connection.prepared.update(names)
        return sent
    raise AssertionError("unreachable")


def _execute(connection: DriverConnection, sql: str, params: dict[str, Any]) -> Sent:
    with connection.raw.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone() if cursor.description else None
        return Sent(cursor.rowcount, row)


def _query(
    statements: Sequence[Statement], prefix: str, prepared: set[str], *, generic: bool = False
) -> tuple[str, list[str]]:
    """The query string and the names it prepares; ``generic``: a string that prepares sets
    the session to generic plans first (a few times a connection; a rolled back string takes
    the setting with it and forgets its statements, so the next one sets it again)."""
    parts, names = [], []
    for statement in statements:
        if not statement.prepare:
            continue
        name, order, body = _split(statement.sql, _frozen(statement.types))
        if name not in prepared:
            types = statement.types or {}
            declared = ", ".join(types.get(key, "unknown") for key in order)
            signature = f" ({declared})" if order else ""
            parts.append(f"PREPARE {name}{signature} AS {body}")
            names.append(name)
    if generic and names:
        parts.insert(0, GENERIC_PLANS)
    if prefix:
        parts.append(prefix)
    for statement in statements:
        if not statement.prepare:
            parts.append(statement.sql)
            continue
        name, order, _ = _split(statement.sql, _frozen(statement.types))
        args = ", ".join(f"%({key})s" for key in order)
        parts.append(f"EXECUTE {name}({args})" if order else f"EXECUTE {name}")
    return ";\n".join(parts), names


@functools.cache
def _split(sql: str, types: tuple[tuple[str, str], ...]) -> tuple[str, tuple[str, ...], str]:
    """(the statement's name, its parameter names in ``$n`` order, its body with ``$n``)."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in order:
            order.append(key)
        return f"${order.index(key) + 1}"

    body = _PLACEHOLDER.sub(number, sql.strip())
    digest = hashlib.sha1(repr((body, types)).encode(), usedforsecurity=False).hexdigest()
    return f"ihub_{digest[:24]}", tuple(order), body


def _frozen(types: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((types or {}).items()))


def _merged(statements: Sequence[Statement]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for statement in statements:
        merged.update(statement.params)
    return merged


def _forget(connection: DriverConnection) -> None:
    """After a failed query string the server may hold some of its statements and not
    others (PREPARE is not undone by a rollback): drop them all, prepare afresh next time."""
    connection.prepared.clear()
    # a broken connection goes, its statements with it
    with contextlib.suppress(psycopg2.Error), connection.raw.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
