"""The id map of REST targets that assign their own ids: source key → target id, the last
version written, the tombstone of a deletion, and a per-key lock.

The lock is a lease on the key's row: one conditional UPDATE takes it when it is free, expired
or already ours. Postgres re-checks the WHERE of a concurrent UPDATE on the row version the
winner committed, and SQLite runs writers one at a time, so exactly one caller gets it. It
expires on its own (a killed worker frees it within its TTL), and the holder renews it before
every request it sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.db import session_scope
from models.schema import IdMapEntry
from models.values import utcnow


@dataclass(frozen=True)
class Mapping:
    target_id: str | None
    version: str | None
    deleted_version: str | None

    def covers(self, version: str) -> bool:
        """Whether ``version`` is already written there, or was deleted at or after it."""
        return any(v is not None and v >= version for v in (self.version, self.deleted_version))


def get(database_url: str, integration: str, key: str) -> Mapping | None:
    with session_scope(database_url) as session:
        row = session.get(IdMapEntry, (integration, key))
        if row is None:
            return None
        return Mapping(row.target_id, row.version, row.deleted_version)


def show(database_url: str, integration: str, key: str) -> dict[str, str | None] | None:
    """The entry for people (the dead letter's detail): target id, version, state."""
    found = get(database_url, integration, key)
    if found is None:
        return None
    deleted = found.deleted_version is not None and (
        found.version is None or found.deleted_version >= found.version
    )
    return {
        "target_id": found.target_id,
        "version": found.version,
        "state": "deleted" if deleted else "mapped" if found.target_id else "unmapped",
    }


def acquire(database_url: str, integration: str, key: str, owner: str, ttl: float) -> bool:
    """Take the key's lock if it is free, expired or ours; False when another holds it."""
    _ensure_row(database_url, integration, key)
    now = utcnow()
    with session_scope(database_url) as session:
        free = (
            (IdMapEntry.lock_owner.is_(None))
            | (IdMapEntry.lock_owner == owner)
            | (IdMapEntry.lock_expires_at < now)
        )
        result = session.execute(
            update(IdMapEntry)
            .where(_key(integration, key), free)
            .values(lock_owner=owner, lock_expires_at=now + timedelta(seconds=ttl))
        )
        return bool(result.rowcount)


def renew(database_url: str, integration: str, key: str, owner: str, ttl: float) -> bool:
    """Extend our lock; False when it expired and someone else took it."""
    with session_scope(database_url) as session:
        result = session.execute(
            update(IdMapEntry)
            .where(_key(integration, key), IdMapEntry.lock_owner == owner)
            .values(lock_expires_at=utcnow() + timedelta(seconds=ttl))
        )
        return bool(result.rowcount)


def release(database_url: str, integration: str, key: str, owner: str) -> None:
    with session_scope(database_url) as session:
        session.execute(
            update(IdMapEntry)
            .where(_key(integration, key), IdMapEntry.lock_owner == owner)
            .values(lock_owner=None, lock_expires_at=None)
        )


def remember(
    database_url: str,
    integration: str,
    key: str,
    target_id: str | None,
    *,
    version: str | None = None,
) -> None:
    """Store the target id (a create or a look-up found it) and, when given, the version
    written; a version never moves backwards."""
    with session_scope(database_url) as session:
        row = _row(session, integration, key)
        row.target_id = target_id
        if version is not None and (row.version is None or row.version < version):
            row.version = version


def forget(database_url: str, integration: str, key: str) -> None:
    """The target no longer has the record (a 404): the next write looks it up again."""
    with session_scope(database_url) as session:
        row = session.get(IdMapEntry, (integration, key))
        if row is not None:
            row.target_id = None


def bury(database_url: str, integration: str, key: str, version: str, *, keep_id: bool) -> None:
    """Record a deletion at ``version``: older writes arriving later change nothing."""
    with session_scope(database_url) as session:
        row = _row(session, integration, key)
        if row.deleted_version is None or row.deleted_version < version:
            row.deleted_version = version
        if not keep_id:
            row.target_id = None


def count(database_url: str, integration: str) -> int:
    with session_scope(database_url) as session:
        rows = session.scalars(
            select(IdMapEntry.source_key).where(
                IdMapEntry.integration == integration, IdMapEntry.target_id.is_not(None)
            )
        )
        return len(list(rows))


def _key(integration: str, key: str) -> ColumnElement[bool]:
    return (IdMapEntry.integration == integration) & (IdMapEntry.source_key == key)


def _row(session: Session, integration: str, key: str) -> IdMapEntry:
    row = session.get(IdMapEntry, (integration, key), with_for_update=True)
    if row is None:
        row = IdMapEntry(integration=integration, source_key=key)
        session.add(row)
    return row


def _ensure_row(database_url: str, integration: str, key: str) -> None:
    """The key's row exists (the lock lives on it); a concurrent insert of it is fine."""
    if get(database_url, integration, key) is not None:
        return
    try:
        with session_scope(database_url) as session:
            session.add(IdMapEntry(integration=integration, source_key=key))
    except IntegrityError:
        pass  # another worker inserted it just now
