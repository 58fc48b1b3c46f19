"""Tokens are encrypted at rest with a key derived from IHUB_SECRET_KEY."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken

from pipeline.errors import ConfigError


class TokenCipher:
    def __init__(self, secret_key: str | None) -> None:
        if not secret_key:
            raise ConfigError(
                "IHUB_SECRET_KEY is not set: it encrypts OAuth tokens in the database. "
                "Set it to a long random string, the same on every worker "
                "(for example: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        digest = hashlib.sha256(secret_key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def encrypt(self, value: str | None) -> str | None:
        return None if value is None else self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return self._fernet.decrypt(value.encode()).decode()
        except InvalidToken:
            raise ConfigError(
                "a stored token cannot be decrypted: IHUB_SECRET_KEY differs from the key it "
                "was stored with (set the same key on every worker, or `ihub auth set`)"
            ) from None
