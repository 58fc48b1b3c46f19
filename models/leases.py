"""A named lease with an expiry: one fetch per integration, on SQLite and Postgres alike."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from models.db import session_scope
from models.schema import Lease
from models.values import utcnow


def acquire(database_url: str, name: str, owner: str, ttl: float) -> bool:
    """Take the lease if it is free, expired, or already ours; False when someone holds it."""
    try:
        return _acquire(database_url, name, owner, ttl)
    except IntegrityError:  # another process inserted the first row of this lease just now
        return False


def _acquire(database_url: str, name: str, owner: str, ttl: float) -> bool:
    with session_scope(database_url) as session:
        lease = session.scalars(select(Lease).where(Lease.name == name).with_for_update()).first()
        now = utcnow()
        if lease is None:
            session.add(Lease(name=name, owner=owner, expires_at=now + timedelta(seconds=ttl)))
            return True
        if lease.owner not in (None, owner) and lease.expires_at and lease.expires_at > now:
            return False
        lease.owner, lease.expires_at = owner, now + timedelta(seconds=ttl)
        return True


def release(database_url: str, name: str, owner: str) -> None:
    with session_scope(database_url) as session:
        lease = session.scalars(select(Lease).where(Lease.name == name).with_for_update()).first()
        if lease is not None and lease.owner == owner:
            lease.owner, lease.expires_at = None, None
