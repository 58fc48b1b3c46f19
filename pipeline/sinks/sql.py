"""The SQL table sink: an idempotent upsert keyed by the record id, guarded by its version.

``INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE table._ihub_version < excluded._ihub_version``
on Postgres and SQLite alike: a replay changes nothing, an older version never overwrites a
newer one. The table is created from the first record's top-level fields (nested values as
JSON), and a field seen later adds a column: which column, and whether a field may have one at
all, is decided in ``pipeline.sinks.columns`` (collisions refused, ihub's names reserved, a cap
past which fields go to one JSON column). A DDL error is never swallowed: only a table or column
that another worker created just now is accepted in its place.

Deletions are versioned writes too: ``mark`` sets ``_ihub_deleted`` on the row (the guard as
above); ``delete`` removes it and keeps the version in ``_ihub_tombstones``, which the upserts of
that integration consult under a per-key lock, so an older version processed late cannot bring
the row back.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    MetaData,
    Table,
    Text,
    inspect,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from models import driver, prepared
from models.db import get_engine
from pipeline.errors import PermanentError
from pipeline.sinks.columns import DEFAULT_MAX_COLUMNS, EXTRA_COLUMN, ColumnMap
from pipeline.sinks.sql_errors import ddl_error, write_errors
from pipeline.sinks.sql_values import ValuesUpsert, upsert_values, values_upsert

VERSION_COLUMN = "_ihub_version"
SYNCED_COLUMN = "_ihub_synced_at"
DELETED_COLUMN = "_ihub_deleted"  # with deletes: {action: mark}
TOMBSTONE_TABLE = "_ihub_tombstones"  # with deletes: {action: delete}
Then = prepared.Statement  # a statement of the sink's database, run in the write's transaction


class SqlSink:
    def __init__(
        self, database_url: str, table: str, key: str, *, max_columns: int = DEFAULT_MAX_COLUMNS
    ) -> None:
        self.database_url = database_url
        self.table_name = table
        self.key = key
        self.max_columns = max_columns
        self._table: Table | None = None
        self._tombstones: Table | None = None
        self._columns: ColumnMap | None = None
        self._lock = threading.Lock()
        self._statements: dict[tuple[int, tuple[str, ...], bool], Any] = {}
        self._compiled: dict[int, Any] = {}
        self._values: dict[int, ValuesUpsert] = {}

    @property
    def engine(self) -> Engine:
        return get_engine(self.database_url)

    def upsert(
        self,
        record: dict[str, Any],
        version: str,
        *,
        deletes: str | None = None,
        then: Then | None = None,
    ) -> bool:
        """Write ``record`` unless a same or newer version is there; True when a row changed.

        ``then``: a statement of this database (psycopg2 SQL and its parameters) that commits
        with the write, or not at all, sent with it in one query string: one round trip and
        one commit (the queue's done mark, when the sink is the system-of-record database).

        ``deletes`` is the integration's deletion action: with ``mark`` the row is marked live
        (``_ihub_deleted`` false, which revives a row deleted before); with ``delete`` a
        tombstone of the same or a newer version keeps an older write from bringing it back.
        """
        return self._write(record, version, deletes=deletes, deleted=False, then=then)

    def _write(
        self,
        record: dict[str, Any],
        version: str,
        *,
        deletes: str | None,
        deleted: bool,
        then: Then | None = None,
    ) -> bool:
        if self.key not in record:
            raise PermanentError(f"sink {self.table_name}: record has no key field {self.key!r}")
        with write_errors(self.table_name):
            row = self._row(record)
            row[self.key] = str(record[self.key])
            row[VERSION_COLUMN] = version
            if deletes == "mark" or deleted:
                row[DELETED_COLUMN] = deleted
            if deletes == "delete":
                self._ensure_tombstones()
            table = self._ensure(row)
            if then is not None and deletes != "delete":
                return self._send_with(then, table, row)
            with self.engine.begin() as conn:
                if then is not None:
                    conn.exec_driver_sql(then.sql, dict(then.params))
                if deletes == "delete" and self._buried(conn, row[self.key], version):
                    return False
                result = conn.execute(self._statement_for(table, row), row)
                return bool(result.rowcount)

    def _send_with(self, then: Then, table: Table, row: dict[str, Any]) -> bool:
        """``then`` and the upsert of ``row`` as one query string, in autocommit: Postgres runs
        the statements of one query as one transaction. The upsert goes last, so its row count
        is the one the driver reports."""
        upsert = prepared.Statement(*self._driver_statement(table, row), prepare=False)
        with driver.connection(self.database_url) as connection:
            return bool(prepared.send(connection, [then, upsert]).rowcount)

    def upsert_many(
        self, records: list[tuple[dict[str, Any], str]], *, connection: Connection
    ) -> int:
        """Write many (record, version) pairs with multi-row upserts, version-guarded each.

        Within the list only the newest version of each key is written (an older one would be
        refused by the guard anyway; Postgres refuses one statement touching a row twice).
        Records with the same columns share one statement. Any error fails them all: the
        caller splits the chunk to find the record at fault.
        """
        newest: dict[str, dict[str, Any]] = {}
        with write_errors(self.table_name):
            for record, version in records:
                if self.key not in record:
                    raise PermanentError(
                        f"sink {self.table_name}: record has no key field {self.key!r}"
                    )
                row = self._row(record)
                row[self.key], row[VERSION_COLUMN] = str(record[self.key]), version
                kept = newest.get(row[self.key])
                if kept is None or kept[VERSION_COLUMN] < version:
                    newest[row[self.key]] = row
            groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for row in newest.values():
                groups.setdefault(tuple(row), []).append(row)
            changed = 0
            table = self._ensure(_union(groups))
            for rows in groups.values():
                if connection.dialect.name == "postgresql":
                    changed += self._upsert_values(connection, table, rows)
                    continue
                # RETURNING makes SQLAlchemy send multi-row statements ("insertmanyvalues");
                # without it the driver's executemany sends one statement per row (measured:
                # a third of a 500-row chunk); a row the version guard kept returns nothing
                statement = self._statement_for(table, rows[0], returning=True)
                changed += len(connection.execute(statement, rows).all())
        return changed

    def _upsert_values(
        self, connection: Connection, table: Table, rows: list[dict[str, Any]]
    ) -> int:
        """Rows of the same columns by ``execute_values``, the upsert compiled once."""
        statement = self._statement_for(table, rows[0], returning=True)
        upsert = self._values.get(id(statement))
        if upsert is None:
            compiled = statement.compile(dialect=self.engine.dialect, column_keys=list(rows[0]))
            upsert = values_upsert(compiled.string, list(rows[0]), self.table_name)
            self._values[id(statement)] = upsert
        return upsert_values(connection.connection.dbapi_connection, upsert, rows)

    def delete(
        self,
        key: str,
        version: str,
        *,
        action: str = "mark",
        then: Then | None = None,
    ) -> bool:
        """Apply a deletion of ``version``: mark the row (``_ihub_deleted`` true, the other
        columns kept) or delete it, in either case only over an older version. ``then`` as
        for ``upsert``, in the deletion's transaction."""
        if action == "mark":
            return self._write({self.key: key}, version, deletes=None, deleted=True, then=then)
        with write_errors(self.table_name):
            tombstones = self._ensure_tombstones()
            with self.engine.begin() as connection:
                if then is not None:
                    connection.exec_driver_sql(then.sql, dict(then.params))
                self._lock_key(connection, key)
                values = {"tbl": self.table_name, "key": key, "version": version}
                insert = self._dialect().insert(tombstones).values(values)
                connection.execute(
                    insert.on_conflict_do_update(
                        index_elements=["tbl", "key"],
                        set_={"version": insert.excluded.version},
                        where=tombstones.c.version < insert.excluded.version,
                    )
                )
                if not inspect(connection).has_table(self.table_name):
                    return False
                result = connection.execute(
                    text(
                        f'DELETE FROM "{self.table_name}" WHERE "{self.key}" = :key '
                        f'AND "{VERSION_COLUMN}" < :version'
                    ),
                    {"key": key, "version": version},
                )
                return bool(result.rowcount)

    def _row(self, record: dict[str, Any]) -> dict[str, Any]:
        """Column values of ``record``; the fields without a column as one JSON object."""
        if self._columns is None:
            self._columns = ColumnMap(self.engine, self.table_name, self.key, self.max_columns)
        try:
            layout = self._columns.layout(record)
        except PermanentError as exc:
            raise PermanentError(f"sink {self.table_name}: {exc}") from None
        row = {column: _value(value) for column, value in layout.columns.items()}
        if layout.extra:
            row[EXTRA_COLUMN] = json.dumps(layout.extra, sort_keys=True, default=str)
        return row

    def _dialect(self) -> Any:
        return postgresql if self.engine.dialect.name == "postgresql" else sqlite

    def _ensure_tombstones(self) -> Table:
        """``_ihub_tombstones`` in the target: the version at which each key was deleted."""
        if self._tombstones is None:
            table = Table(
                TOMBSTONE_TABLE,
                MetaData(),
                Column("tbl", Text, primary_key=True),
                Column("key", Text, primary_key=True),
                Column("version", Text, nullable=False),
            )
            _create(self.engine, table)
            self._tombstones = table
        return self._tombstones

    def _lock_key(self, connection: Any, key: str) -> None:
        """Serialise writes of one key (SQLite's BEGIN IMMEDIATE already serialises all)."""
        if self.engine.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:name))"),
                {"name": f"{self.table_name}:{key}"},
            )

    def _buried(self, connection: Any, key: str, version: str) -> bool:
        """Whether ``key`` was deleted at ``version`` or later (the caller's lock held)."""
        self._lock_key(connection, key)
        found = connection.execute(
            text(f'SELECT "version" FROM "{TOMBSTONE_TABLE}" WHERE "tbl" = :tbl AND "key" = :key'),
            {"tbl": self.table_name, "key": key},
        ).scalar()
        return found is not None and found >= version

    def _statement_for(self, table: Table, row: dict[str, Any], returning: bool = False) -> Any:
        """The version-guarded upsert of rows with ``row``'s columns (values bound later),
        built once per table, set of columns and whether it returns the keys it wrote."""
        key = (id(table), tuple(row), returning)
        statement = self._statements.get(key)
        if statement is None:
            statement = self._build_statement(table, row)
            if returning:
                statement = statement.returning(table.c[self.key])
            self._statements[key] = statement
        return statement

    def _driver_statement(self, table: Table, row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The upsert of ``row`` as psycopg2 SQL and parameters, compiled once per statement.
        No bind processor is applied: the values are what ``_row`` makes of a record (JSON
        scalars; objects and lists as JSON text), which psycopg2 adapts itself and Postgres
        casts to the column's type, as for any literal."""
        statement = self._statement_for(table, row)
        compiled = self._compiled.get(id(statement))
        if compiled is None:
            compiled = statement.compile(dialect=self.engine.dialect, column_keys=list(row))
            self._compiled[id(statement)] = compiled
        return compiled.string, compiled.construct_params(row)

    def _build_statement(self, table: Table, row: dict[str, Any]) -> Any:
        insert = self._dialect().insert(table)
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
                if n not in (self.key, VERSION_COLUMN, SYNCED_COLUMN)
            ]
            _create(engine, Table(self.table_name, MetaData(), *columns))
        table = Table(self.table_name, MetaData(), autoload_with=engine)
        missing = [n for n in row if n not in table.c]
        for name in missing:
            self._add_column(name, row[name])
        return Table(self.table_name, MetaData(), autoload_with=engine) if missing else table

    def _add_column(self, name: str, value: Any) -> None:
        """ALTER TABLE ... ADD COLUMN; a failure stands unless another worker added it."""
        engine = self.engine
        type_sql = _sql_type(value)().compile(dialect=engine.dialect)
        statement = f'ALTER TABLE "{self.table_name}" ADD COLUMN "{name}" {type_sql}'
        try:
            with engine.begin() as connection:
                connection.execute(text(statement))
        except DBAPIError as exc:
            present = {c["name"] for c in inspect(engine).get_columns(self.table_name)}
            if name not in present:
                raise ddl_error(self.table_name, statement, exc) from None

    def count(self) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(text(f'SELECT COUNT(*) FROM "{self.table_name}"')).scalar_one()
            )


def _union(groups: dict[tuple[str, ...], list[dict[str, Any]]]) -> dict[str, Any]:
    """One sample value per column over every row (a non-null one where any), to type columns.
    A group's rows share their columns, so its rows are read only while a column lacks one."""
    sample: dict[str, Any] = {}
    for columns, rows in groups.items():
        for name in columns:
            sample.setdefault(name, None)
        lacking = [name for name in columns if sample[name] is None]
        for row in rows:
            if not lacking:
                break
            for name in lacking:
                if row[name] is not None:
                    sample[name] = row[name]
            lacking = [name for name in lacking if sample[name] is None]
    return sample


def _create(engine: Engine, table: Table) -> None:
    """CREATE TABLE; a failure stands unless another worker created the table just now."""
    try:
        table.create(engine, checkfirst=True)
    except DBAPIError as exc:
        if not inspect(engine).has_table(table.name):
            raise ddl_error(table.name, f'CREATE TABLE "{table.name}"', exc) from None


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
