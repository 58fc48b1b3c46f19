"""The token manager: when to refresh, and making sure only one worker does it.

requests-oauthlib alone refreshes only after expiry, never on a 401, never without
``expires_in``, and sends a refresh grant for client_credentials (PITFALLS 31-34). Here:
refresh a margin before expiry; on a 401, refresh once unless another worker already did;
under the row lock, re-read first, so a rotating refresh token is never spent twice.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Callable

from models.redaction import register_secret
from models.tokens import LockedToken, StoredToken, TokenStore
from pipeline.auth.grants import expires_at_from, request_token
from pipeline.config_auth import OAuth2Config
from pipeline.errors import ReauthRequired, TransientError
from pipeline.retry import backoff_seconds

log = logging.getLogger(__name__)

TRANSIENT_TRIES = 3


class TokenManager:
    def __init__(
        self,
        integration: str,
        config: OAuth2Config,
        store: TokenStore,
        *,
        clock: Callable[[], float] = time.time,
        on_refresh: Callable[[], None] | None = None,
    ) -> None:
        self.integration = integration
        self.config = config
        self.store = store
        self.clock = clock
        self.on_refresh = on_refresh
        self._cached: StoredToken | None = None
        for secret in (config.client_secret, config.password, config.refresh_token):
            register_secret(secret.get_secret_value() if secret else None)
        register_secret(_basic_credentials(config))

    def access_token(self) -> str:
        """A token that is valid now, refreshing first when it is close to expiry."""
        token = self._cached
        if token is None or not token.usable(self.clock(), self.config.refresh_margin):
            token = self.store.load()
        if token is None or not token.usable(self.clock(), self.config.refresh_margin):
            token = self._refresh(stale=token.access_token if token else None)
        self._cached = token
        return _required(token.access_token)

    def invalidate(self, rejected: str) -> str:
        """The API answered 401 to ``rejected``: refresh unless another worker already did."""
        self._cached = None
        return _required(self._refresh(stale=rejected, forced=True).access_token)

    def _refresh(self, *, stale: str | None, forced: bool = False) -> StoredToken:
        failure: ReauthRequired | TransientError
        with self.store.locked() as locked:
            current = self._adopt_seed(locked)
            now = self.clock()
            newer = current.access_token and current.access_token != stale
            if current.usable(now, self.config.refresh_margin) and (newer or not forced):
                return current  # someone refreshed while we waited for the lock
            try:
                return self._grant(locked, current)
            except (ReauthRequired, TransientError) as exc:
                failure = exc  # leave the block normally, so the recorded failure commits
        raise failure

    def _grant(self, locked: LockedToken, current: StoredToken) -> StoredToken:
        for attempt in range(1, TRANSIENT_TRIES + 1):
            try:
                raw = request_token(
                    self.config,
                    integration=self.integration,
                    refresh_token=self._refresh_token_for(current),
                )
                break
            except ReauthRequired as exc:
                locked.record_failure(exc.reason)
                raise
            except TransientError as exc:
                locked.record_failure(exc.message)
                if attempt == TRANSIENT_TRIES:
                    raise
                time.sleep(backoff_seconds(attempt, base=0.5, cap=5, retry_after=exc.retry_after))
        now = self.clock()
        token = StoredToken(
            access_token=raw["access_token"],
            # A rotated refresh token replaces the old one in this same transaction.
            refresh_token=raw.get("refresh_token") or current.refresh_token,
            token_type=raw.get("token_type", "Bearer"),
            expires_at=expires_at_from(
                raw, now=now, default_expires_in=self.config.default_expires_in
            ),
            issued_at=now,
            seed_hash=current.seed_hash,
        )
        register_secret(token.access_token)
        register_secret(token.refresh_token)
        saved = locked.save(token)
        log.info("%s: token refreshed (refresh #%d)", self.integration, saved.refresh_count)
        if self.on_refresh:
            self.on_refresh()
        return saved

    def _refresh_token_for(self, current: StoredToken) -> str | None:
        if self.config.grant_type == "client_credentials":
            return None
        return current.refresh_token

    def has_new_seed(self) -> bool:
        """The config now names a refresh token this credential has not used yet."""
        seed = self.config.refresh_token
        if seed is None:
            return False
        stored = self.store.load()
        return stored is None or stored.seed_hash != _digest(seed.get_secret_value())

    def _adopt_seed(self, locked: LockedToken) -> StoredToken:
        """A refresh token from the config is used once; later rotations live in the row."""
        current = locked.current
        seed = self.config.refresh_token
        if seed is None:
            return current
        digest = _digest(seed.get_secret_value())
        if current.seed_hash == digest:
            return current
        fresh = StoredToken(refresh_token=seed.get_secret_value(), seed_hash=digest)
        return locked.save(fresh, refreshed=False)


def _basic_credentials(config: OAuth2Config) -> str | None:
    """The HTTP Basic value requests sends (requests-oauthlib logs it at DEBUG)."""
    if config.client_secret is None:
        return None
    pair = f"{config.client_id}:{config.client_secret.get_secret_value()}"
    try:
        return base64.b64encode(pair.encode("latin1")).decode()
    except UnicodeEncodeError:  # requests cannot send such a pair as Basic either
        return None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _required(access_token: str | None) -> str:
    if not access_token:
        raise TransientError("token endpoint returned no access_token")
    return access_token
