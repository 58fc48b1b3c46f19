"""Tokens are encrypted at rest with a key derived from IHUB_SECRET_KEY.

The Fernet key is scrypt(IHUB_SECRET_KEY, salt): a stolen database does not give the key to a
precomputed guess, and each ciphertext names its salt (``ihub2$<salt>$<fernet token>``). A
process draws one salt per key and derives once; reading caches one derivation per salt seen.

Rotation: ``IHUB_SECRET_KEY`` is the key new writes use; ``IHUB_SECRET_KEY_OLD`` (comma-separated)
lists keys that are still read. ``ihub auth rotate-key`` rewrites every stored token under the
new key, after which the old ones can go. Ciphertexts of the first scheme (Fernet over an
unsalted SHA-256 of the key, no prefix) stay readable under any of the keys, so an upgrade
loses no stored token; they are rewritten in the new scheme on the next refresh or rotation.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from collections.abc import Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from pipeline.errors import ConfigError

PREFIX = "ihub2$"
MIN_KEY_LENGTH = 32
SALT_BYTES = 16
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # 16 MiB, tens of ms: once per process and salt
_PLACEHOLDERS = ("change-me", "changeme", "change_me", "replace-me", "your-secret", "example")
_GENERATE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def check_key(secret_key: str | None, name: str = "IHUB_SECRET_KEY") -> str:
    """The key itself, or a ConfigError saying why it cannot protect tokens."""
    if not secret_key:
        raise ConfigError(
            f"{name} is not set: it encrypts OAuth tokens in the database. Set it to a long "
            f"random string, the same on every worker (for example: {_GENERATE})"
        )
    lowered = secret_key.lower()
    problem = None
    if len(secret_key) < MIN_KEY_LENGTH:
        problem = f"is {len(secret_key)} characters long; at least {MIN_KEY_LENGTH} are needed"
    elif any(p in lowered for p in _PLACEHOLDERS):
        problem = "is a placeholder (such as the compose file's change-me default)"
    elif len(set(secret_key)) < 8:
        problem = "repeats a few characters; it must be random"
    if problem:
        raise ConfigError(f"{name} {problem}: set a long random string ({_GENERATE})")
    return secret_key


def old_keys_from(value: str | None) -> list[str]:
    """IHUB_SECRET_KEY_OLD: keys still read during a rotation, comma-separated."""
    return [k.strip() for k in (value or "").split(",") if k.strip()]


class TokenCipher:
    def __init__(self, secret_key: str | None, old_keys: Sequence[str] = ()) -> None:
        self._key = check_key(secret_key)
        self._keys = [self._key, *(k for k in old_keys if k and k != self._key)]

    @classmethod
    def from_settings(cls, settings: Any) -> TokenCipher:
        """IHUB_SECRET_KEY for writes and reads, IHUB_SECRET_KEY_OLD for reads."""
        return cls(settings.secret_key, settings.secret_key_old)

    def encrypt(self, value: str | None) -> str | None:
        if value is None:
            return None
        salt, fernet = _writer(self._key)
        token = fernet.encrypt(value.encode()).decode()
        return f"{PREFIX}{base64.urlsafe_b64encode(salt).decode()}${token}"

    def decrypt(self, value: str | None) -> str | None:
        if value is None:
            return None
        for fernet in self._candidates(value):
            try:
                return fernet.decrypt(_body(value).encode()).decode()
            except InvalidToken:
                continue
        raise ConfigError(
            "a stored token cannot be decrypted: IHUB_SECRET_KEY differs from the key it "
            "was stored with (set the same key on every worker, list a previous key in "
            "IHUB_SECRET_KEY_OLD, or `ihub auth set`)"
        )

    def current(self, value: str | None) -> bool:
        """Whether ``value`` is already in the salted scheme under the new key."""
        if value is None:
            return True
        if not value.startswith(PREFIX):
            return False
        try:
            _derived(self._key, _salt(value)).decrypt(_body(value).encode())
        except (InvalidToken, ValueError):
            return False
        return True

    def _candidates(self, value: str) -> list[Fernet]:
        if value.startswith(PREFIX):
            try:
                salt = _salt(value)
            except ValueError:
                return []
            return [_derived(key, salt) for key in self._keys]
        return [_legacy(key) for key in self._keys]


def _salt(value: str) -> bytes:
    encoded = value[len(PREFIX) :].partition("$")[0]
    salt = base64.urlsafe_b64decode(encoded.encode())
    if len(salt) != SALT_BYTES:
        raise ValueError("not an ihub2 salt")
    return salt


def _body(value: str) -> str:
    return value[len(PREFIX) :].partition("$")[2] if value.startswith(PREFIX) else value


@functools.lru_cache(maxsize=128)
def _derived(key: str, salt: bytes) -> Fernet:
    kdf = Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return Fernet(base64.urlsafe_b64encode(kdf.derive(key.encode())))


@functools.lru_cache(maxsize=16)
def _writer(key: str) -> tuple[bytes, Fernet]:
    """This process's salt for ``key`` (drawn once: one derivation per process)."""
    salt = os.urandom(SALT_BYTES)
    return salt, _derived(key, salt)


@functools.lru_cache(maxsize=16)
def _legacy(key: str) -> Fernet:
    """The first scheme: Fernet over the unsalted SHA-256 of the key (read-only)."""
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()))
