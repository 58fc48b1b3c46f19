"""Which column of a SQL sink table holds which field of a record: ours to decide, not the source's.

A field's column is its name reduced to ASCII ``[A-Za-z0-9_]`` (anything else becomes ``_``),
cut to 63 characters (Postgres' limit), case kept. Two names that differ only in case are the
same column (SQLite's rule, applied on Postgres too, so a table is the same on both).

The mapping is kept in ``_ihub_columns`` next to the table, one row per column claimed by one
field, the first claim winning under a per-table lock. A second field reducing to a claimed
column (``a-b`` after ``a_b``, ``Name`` after ``name``), in the same record or months later, is
a ``PermanentError`` that names both: the record is dead-lettered, nothing is merged.

Names starting with ``_ihub_`` are ihub's own columns; a source field so named, and every
field past ``max_columns`` claimed columns, goes into the one JSON column ``_ihub_extra``.
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, Engine, MetaData, Table, Text, func, inspect, select, text

from pipeline.errors import PermanentError

RESERVED_PREFIX = "_ihub_"
EXTRA_COLUMN = "_ihub_extra"
COLUMNS_TABLE = "_ihub_columns"
MAX_IDENTIFIER = 63
DEFAULT_MAX_COLUMNS = 200
MAX_PLANS = 1024  # layouts remembered per table, by the record's field names
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


@functools.lru_cache(maxsize=4096)
def column_name(name: object) -> str:
    """The column a field name reduces to (before any collision check)."""
    return _UNSAFE.sub("_", str(name))[:MAX_IDENTIFIER] or "_"


def fold(column: str) -> str:
    return column.lower()


def reserved(column: str) -> bool:
    return fold(column).startswith(RESERVED_PREFIX)


@dataclass
class Layout:
    """One record laid out: ``columns`` maps column to value, ``extra`` the overflow fields."""

    columns: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def check_collisions(fields: list[str]) -> None:
    """Two fields of one record that reduce to one column: an error naming both."""
    seen: dict[str, str] = {}
    for name in fields:
        column = column_name(name)
        if reserved(column):
            continue
        other = seen.setdefault(fold(column), name)
        if other != name:
            raise PermanentError(_collision(other, name, column))


def _collision(first: str, second: str, column: str) -> str:
    return (
        f"fields {first!r} and {second!r} both map to column {column!r} (names are reduced to "
        "A-Z, a-z, 0-9 and _, case-insensitively): rename one in a transform"
    )


class ColumnMap:
    """The claims of one table, cached in this process and refreshed from the database."""

    def __init__(self, engine: Engine, table: str, key: str, max_columns: int) -> None:
        self.engine, self.table, self.key, self.max_columns = engine, table, key, max_columns
        self._owners: dict[str, tuple[str, str]] = {}  # folded column -> (column, field)
        self._past_cap: set[str] = set()  # fields that found no room: never asked again
        self._plans: dict[tuple[str, ...], tuple[str | None, ...]] = {}
        self._lock = threading.Lock()
        self._meta = Table(
            COLUMNS_TABLE,
            MetaData(),
            Column("tbl", Text, primary_key=True),
            Column("folded", Text, primary_key=True),
            Column("col", Text, nullable=False),
            Column("field", Text, nullable=False),
        )
        self._created = False

    def layout(self, record: dict[str, Any]) -> Layout:
        """Columns for each field of ``record`` (claiming new ones), or a PermanentError."""
        names = tuple(str(k) for k in record)
        plan = self._plans.get(names)
        if plan is None:
            plan = self._plan(names)
            if len(self._plans) < MAX_PLANS:
                self._plans[names] = plan
        layout = Layout()
        for name, owned, value in zip(names, plan, record.values(), strict=True):
            if owned is None:
                layout.extra[name] = value
            else:
                layout.columns[owned] = value
        return layout

    def _plan(self, names: tuple[str, ...]) -> tuple[str | None, ...]:
        """The column of each of ``names`` (None: into ``_ihub_extra``), claiming new ones.
        Claims are never taken back, so a plan stays true for every later record with these
        fields in this order; most records of a source share theirs, so a table plans a few
        times, not once a record (measured: 40 % of a batched chunk's time before)."""
        check_collisions(list(names))
        with self._lock:
            wanted = [n for n in names if not self._overflows(n)]
            if any(self._lookup(n) is None for n in wanted):
                self._claim(wanted)
                self._past_cap.update(n for n in wanted if self._lookup(n) is None)
            return tuple(None if self._overflows(n) else self._lookup(n) for n in names)

    def _overflows(self, name: str) -> bool:
        return name in self._past_cap or reserved(column_name(name))

    def _lookup(self, name: str) -> str | None:
        """The column ``name`` owns; None when unclaimed; an error when another field owns it."""
        column = column_name(name)
        found = self._owners.get(fold(column))
        if found is None:
            return None
        if found[1] != name:
            raise PermanentError(_collision(found[1], name, found[0]))
        return found[0]

    def _claim(self, names: list[str]) -> None:
        """Claim the unclaimed columns of ``names`` in order, up to ``max_columns``; the rest
        go to ``_ihub_extra``. One transaction under a per-table lock, so the cap holds."""
        self._ensure_table()
        try:
            with self.engine.begin() as connection:
                if self.engine.dialect.name == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(hashtext(:name))"),
                        {"name": f"{COLUMNS_TABLE}:{self.table}"},
                    )
                self._read(connection)
                if fold(self.key) not in self._owners:
                    self._insert(connection, self.key, self.key)
                legacy = self._legacy(connection)
                unclaimed = [n for n in names if self._lookup(n) is None]
                room = self.max_columns - (len(self._owners) - 1) - len(legacy)
                for name in unclaimed:
                    column = column_name(name)
                    if fold(column) in legacy:  # made before this mapping: its first field
                        self._insert(connection, legacy.pop(fold(column)), name)
                    elif room > 0:
                        self._insert(connection, column, name)
                        room -= 1
        except Exception:
            self._owners = {}  # rolled back: read them again next time
            raise

    def _read(self, connection: Any) -> None:
        meta = self._meta
        rows = connection.execute(
            select(meta.c.folded, meta.c.col, meta.c.field).where(meta.c.tbl == self.table)
        )
        self._owners = {folded: (col, owner) for folded, col, owner in rows}

    def _legacy(self, connection: Any) -> dict[str, str]:
        """Data columns of a table made before this mapping existed, not claimed yet: the first
        field reducing to one adopts it, so an upgrade dead-letters nothing that wrote before."""
        if not inspect(connection).has_table(self.table):
            return {}
        names = [c["name"] for c in inspect(connection).get_columns(self.table)]
        return {fold(n): n for n in names if not reserved(n) and fold(n) not in self._owners}

    def _insert(self, connection: Any, column: str, name: str) -> None:
        connection.execute(
            self._meta.insert().values(tbl=self.table, folded=fold(column), col=column, field=name)
        )
        self._owners[fold(column)] = (column, name)

    def _ensure_table(self) -> None:
        if self._created:
            return
        try:
            self._meta.create(self.engine, checkfirst=True)
        except Exception:
            if not inspect(self.engine).has_table(COLUMNS_TABLE):
                raise  # not a race with another worker: the DDL itself failed
        self._created = True

    def claimed(self) -> int:
        """How many data columns the table has claimed (for tests and ``ihub check``)."""
        self._ensure_table()
        meta = self._meta
        with self.engine.connect() as connection:
            query = select(func.count()).select_from(meta).where(meta.c.tbl == self.table)
            return int(connection.execute(query).scalar_one()) - 1
