"""The SQL table sink: an idempotent upsert keyed by the record id, guarded by its version.

``INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE table._ihub_version < excluded._ihub_version``
on Postgres and SQLite alike: a replay changes nothing, an older version never overwrites a
newer one. The table is created from the first record's top-level fields (nested values as
JSON), and a field seen later adds a column.
"""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    Float,
    MetaData,
    Table,
    Text,
    inspect,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError

from models.db import get_engine
from pipeline.errors import PermanentError, TransientError

VERSION_COLUMN = "_ihub_version"
SYNCED_COLUMN = "_ihub_synced_at"


class SqlSink:
    def __init__(self, database_url: str, table: str, key: str) -> None:
        self.database_url = database_url
        self.table_name = table
        self.key = key
        self._table: Table | None = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        return get_engine(self.database_url)

    def upsert(self, record: dict[str, Any], version: str) -> bool:
        """Write ``record`` unless a same or newer version is there; True when a row changed."""
        if self.key not in record:
            raise PermanentError(f"sink {self.table_name}: record has no key field {self.key!r}")
        row = {_column(k): _value(v) for k, v in record.items()}
        row[self.key] = str(record[self.key])
        row[VERSION_COLUMN] = version
        try:
            table = self._ensure(row)
            with self.engine.begin() as connection:
                result = connection.execute(self._statement(table, row))
                return bool(result.rowcount)
        except OperationalError as exc:
            raise TransientError(
                f"sink {self.table_name}: database unavailable: {exc.orig}"
            ) from None
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise TransientError(f"sink {self.table_name}: connection lost") from None
            raise PermanentError(f"sink {self.table_name}: rejected: {exc.orig}") from None

    def _statement(self, table: Table, row: dict[str, Any]) -> Any:
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(table).values(row)
        changes = {name: insert.excluded[name] for name in row if name != self.key}
        changes[SYNCED_COLUMN] = text("CURRENT_TIMESTAMP")
        return insert.on_conflict_do_update(
            index_elements=[self.key],
            set_=changes,
            where=table.c[VERSION_COLUMN] < insert.excluded[VERSION_COLUMN],
        )

    def _ensure(self, row: dict[str, Any]) -> Table:
        with self._lock:
            table = self._table
            if table is not None and all(name in table.c for name in row):
                return table
            self._table = self._create_or_extend(row)
            return self._table

    def _create_or_extend(self, row: dict[str, Any]) -> Table:
        engine = self.engine
        if not inspect(engine).has_table(self.table_name):
            columns = [
                Column(self.key, Text, primary_key=True),
                Column(VERSION_COLUMN, Text, nullable=False),
                Column(SYNCED_COLUMN, Text, server_default=text("CURRENT_TIMESTAMP")),
            ]
            columns += [
                Column(n, _sql_type(v))
                for n, v in row.items()
                if n not in (self.key, VERSION_COLUMN)
            ]
            # another worker may create it first: reflect below either way
            with contextlib.suppress(DBAPIError):
                Table(self.table_name, MetaData(), *columns).create(engine)
        table = Table(self.table_name, MetaData(), autoload_with=engine)
        missing = [n for n in row if n not in table.c]
        for name in missing:
            type_sql = _sql_type(row[name])().compile(dialect=engine.dialect)
            statement = f'ALTER TABLE "{self.table_name}" ADD COLUMN "{name}" {type_sql}'
            with contextlib.suppress(DBAPIError), engine.begin() as connection:
                connection.execute(text(statement))  # or another worker added it just now
        return Table(self.table_name, MetaData(), autoload_with=engine) if missing else table

    def count(self) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(text(f'SELECT COUNT(*) FROM "{self.table_name}"')).scalar_one()
            )


def _column(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in str(name))
    return cleaned[:63] or "_"


def _value(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return value


def _sql_type(value: Any) -> Any:
    if isinstance(value, bool):
        return Boolean
    if isinstance(value, int):
        return BigInteger
    if isinstance(value, float):
        return Float
    return Text
