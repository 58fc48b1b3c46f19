"""The token row: read freely, changed only under a row lock (SQLite: BEGIN IMMEDIATE)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.db import session_scope
from models.schema import Token
from models.values import utcnow


@dataclass(frozen=True)
class StoredToken:
    access_token: str | None = None
    refresh_token: str | None = None
    token_type: str | None = "Bearer"
    expires_at: float | None = None
    issued_at: float | None = None
    seed_hash: str | None = None
    refresh_count: int = 0

    def usable(self, now: float, margin: float) -> bool:
        """True while safely before expiry (the margin is at most half the token's life)."""
        if not self.access_token:
            return False
        if self.expires_at is None:
            return True
        life = self.expires_at - (self.issued_at or self.expires_at)
        effective = min(margin, life / 2) if life > 0 else margin
        return now < self.expires_at - effective


class Cipher(Protocol):
    """What the store needs to keep tokens encrypted at rest; the engine supplies the key."""

    def encrypt(self, value: str | None) -> str | None: ...

    def decrypt(self, value: str | None) -> str | None: ...


class TokenStore:
    """One row per credential; ``locked()`` is the single-flight section for refreshes."""

    def __init__(self, database_url: str, credential: str, cipher: Cipher) -> None:
        self.database_url = database_url
        self.credential = credential
        self.cipher = cipher

    def load(self) -> StoredToken | None:
        with session_scope(self.database_url) as session:
            row = session.get(Token, self.credential)
            return self._decode(row) if row else None

    @contextmanager
    def locked(self) -> Iterator[LockedToken]:
        """Hold the row lock; what ``save`` writes commits when the block ends."""
        with session_scope(self.database_url) as session:
            row = self._lock_row(session)
            yield LockedToken(self, session, row)

    def _lock_row(self, session: Session) -> Token:
        query = select(Token).where(Token.credential == self.credential).with_for_update()
        row = session.scalars(query).first()
        if row is None:
            # Workers meeting a new credential together all try to create its row: the losers
            # wait for the winner's commit, fail on the key, and then lock the winner's row.
            new = insert(Token).values(credential=self.credential, refresh_count=0, failure_count=0)
            try:
                with session.begin_nested():
                    session.execute(new)
            except IntegrityError:
                pass
            row = session.scalars(query).one()
        return row

    def _decode(self, row: Token) -> StoredToken:
        return StoredToken(
            access_token=self.cipher.decrypt(row.access_token),
            refresh_token=self.cipher.decrypt(row.refresh_token),
            token_type=row.token_type,
            expires_at=row.expires_at,
            issued_at=row.issued_at,
            seed_hash=row.seed_hash,
            refresh_count=row.refresh_count or 0,
        )


class LockedToken:
    def __init__(self, store: TokenStore, session: Session, row: Token) -> None:
        self._store, self._session, self._row = store, session, row

    @property
    def current(self) -> StoredToken:
        return self._store._decode(self._row)

    def save(self, token: StoredToken, *, refreshed: bool = True) -> StoredToken:
        cipher, row = self._store.cipher, self._row
        row.access_token = cipher.encrypt(token.access_token)
        row.refresh_token = cipher.encrypt(token.refresh_token)
        row.token_type = token.token_type
        row.expires_at = token.expires_at
        row.issued_at = token.issued_at
        row.seed_hash = token.seed_hash
        if refreshed:
            row.refresh_count = (row.refresh_count or 0) + 1
            row.refreshed_at = utcnow()
            row.last_error = None
        self._session.flush()
        return replace(token, refresh_count=row.refresh_count or 0)

    def record_failure(self, reason: str) -> None:
        self._row.failure_count = (self._row.failure_count or 0) + 1
        self._row.last_error = reason[:2000]


def token_health(database_url: str) -> list[dict[str, object]]:
    """What an operator may see of each credential: never the token values."""
    with session_scope(database_url) as session:
        rows = session.scalars(select(Token).order_by(Token.credential))
        return [
            {
                "credential": row.credential,
                "expires_at": datetime.fromtimestamp(row.expires_at, UTC).isoformat()
                if row.expires_at
                else None,
                "refresh_count": row.refresh_count or 0,
                "failure_count": row.failure_count or 0,
                "last_error": row.last_error,
                "has_refresh_token": row.refresh_token is not None,
            }
            for row in rows
        ]
