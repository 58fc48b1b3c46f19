"""What a SQL sink's database error means for the record: retried, or dead-lettered.

An outage (SQLAlchemy's or psycopg2's own ``OperationalError``, a connection lost) is transient;
a statement the database refused is permanent, since sending it again would be refused again.
psycopg2's errors come raw from the driver SQL the batched path sends itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg2
from sqlalchemy.exc import DBAPIError, OperationalError

from pipeline.errors import PermanentError, TransientError


@contextlib.contextmanager
def write_errors(table: str) -> Iterator[None]:
    """Raise a write's database error as a ``TransientError`` or a ``PermanentError``."""
    try:
        yield
    except OperationalError as exc:
        raise TransientError(f"sink {table}: database unavailable: {exc.orig}") from None
    except psycopg2.OperationalError as exc:
        raise TransientError(f"sink {table}: database unavailable: {exc}") from None
    except psycopg2.Error as exc:
        raise PermanentError(f"sink {table}: rejected: {exc}") from None
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise TransientError(f"sink {table}: connection lost") from None
        raise PermanentError(f"sink {table}: rejected: {exc.orig}") from None


def ddl_error(table: str, statement: str, exc: DBAPIError) -> Exception:
    """A refused DDL statement is permanent for the record (the schema will not change by
    itself); a lost connection or a lock timeout stays what it was, and is retried."""
    text_of = str(exc.orig).lower()
    if exc.connection_invalidated or "locked" in text_of or "timeout" in text_of:
        return exc
    return PermanentError(f"sink {table}: {statement} failed: {exc.orig}")
