"""A named lease with a short expiry that its holder's heartbeat moves: one fetch per
integration, on SQLite and Postgres alike.

A holder killed at any instruction stops renewing, so its lease frees itself within one TTL
(ARCHITECTURE invariant 7). ``hold`` renews inside the caller's transaction: a checkpoint
commits only while its run still owns the lease, which fences off a holder that lost it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.db import session_scope
from models.schema import Lease
from models.values import utcnow


@dataclass(frozen=True)
class Holder:
    """Who holds a lease (``holder``: worker and process; ``owner``: the task id), since when."""

    owner: str
    holder: str | None
    since: datetime | None
    renewed_at: datetime | None
    expires_at: datetime


def acquire(
    database_url: str, name: str, owner: str, ttl: float, holder: str | None = None
) -> bool:
    """Take the lease if it is free, expired, or already ours; False when someone holds it."""
    try:
        return _acquire(database_url, name, owner, ttl, holder)
    except IntegrityError:  # another process inserted the first row of this lease just now
        return False


def _acquire(database_url: str, name: str, owner: str, ttl: float, holder: str | None) -> bool:
    with session_scope(database_url) as session:
        lease = session.scalars(select(Lease).where(Lease.name == name).with_for_update()).first()
        now = utcnow()
        if lease is None:
            lease = Lease(name=name)
            session.add(lease)
        elif lease.owner not in (None, owner) and lease.expires_at and lease.expires_at > now:
            return False
        if lease.owner != owner or lease.acquired_at is None:
            lease.acquired_at = now
        lease.owner, lease.holder = owner, holder
        lease.expires_at, lease.renewed_at = now + timedelta(seconds=ttl), now
        return True


def hold(session: Session, name: str, owner: str, ttl: float) -> bool:
    """Renew in the caller's transaction; False when another owner took the lease over."""
    now = utcnow()
    result = session.execute(
        update(Lease)
        .where(Lease.name == name, Lease.owner == owner)
        .values(expires_at=now + timedelta(seconds=ttl), renewed_at=now)
    )
    return result.rowcount == 1


def renew(database_url: str, name: str, owner: str, ttl: float) -> bool:
    """A heartbeat in a transaction of its own (while the holder waits)."""
    with session_scope(database_url) as session:
        return hold(session, name, owner, ttl)


def release(database_url: str, name: str, owner: str) -> None:
    with session_scope(database_url) as session:
        lease = session.scalars(select(Lease).where(Lease.name == name).with_for_update()).first()
        if lease is not None and lease.owner == owner:
            lease.owner, lease.expires_at, lease.holder = None, None, None
            lease.acquired_at = lease.renewed_at = None


def current(database_url: str, name: str) -> Holder | None:
    """The live holder of a lease; None when it is free or expired."""
    with session_scope(database_url) as session:
        lease = session.get(Lease, name)
        if lease is None or lease.owner is None or lease.expires_at is None:
            return None
        if lease.expires_at <= utcnow():
            return None
        return Holder(
            lease.owner, lease.holder, lease.acquired_at, lease.renewed_at, lease.expires_at
        )


def remember(database_url: str, name: str, value: str) -> str | None:
    """Keep ``value`` under ``name`` (a row that never expires); the value it replaced.

    The reconciler keeps the broker's marker here: Redis may lose it, the database does not.
    Two first writers at once: the loser reports the winner's value as unknown (None).
    """
    try:
        return _remember(database_url, name, value)
    except IntegrityError:
        return None


def _remember(database_url: str, name: str, value: str) -> str | None:
    with session_scope(database_url) as session:
        row = session.scalars(select(Lease).where(Lease.name == name).with_for_update()).first()
        if row is None:
            session.add(Lease(name=name, owner=value, acquired_at=utcnow()))
            return None
        previous, row.owner, row.acquired_at = row.owner, value, utcnow()
        return previous
