"""IHUB_SECRET_KEY: a salted KDF, weak and placeholder keys refused, rotation, old rows readable."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select

from ihub.cli import main
from models.db import session_scope
from models.schema import Token
from models.tokens import StoredToken, TokenStore
from pipeline.auth import crypto
from pipeline.auth.crypto import PREFIX, TokenCipher
from pipeline.errors import ConfigError
from pipeline.settings import settings_from_env

OLD = "old-key-0123456789-abcdefghijklmnopqrstuvw"
NEW = "new-key-9876543210-zyxwvutsrqponmlkjihgfed"


def legacy_encrypt(key: str, value: str) -> str:
    """What the first scheme stored: Fernet over the unsalted SHA-256 of the key."""
    fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()))
    return fernet.encrypt(value.encode()).decode()


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("short-key", "at least 32"),
        ("change-me-to-a-long-random-string", "placeholder"),
        ("CHANGEME-CHANGEME-CHANGEME-CHANGEME", "placeholder"),
        ("k" * 40, "random"),
        ("abababababababababababababababab", "random"),
    ],
)
def test_short_placeholder_and_repetitive_keys_are_refused(key: str, why: str) -> None:
    """The compose default, a short key or a repeated character: a ConfigError saying why."""
    with pytest.raises(ConfigError, match=f"IHUB_SECRET_KEY .*{why}"):
        TokenCipher(key)


def test_ciphertext_is_salted_not_the_plain_sha256_key() -> None:
    """New ciphertexts carry a salt; the unsalted SHA-256 key cannot open them; two processes'
    salts differ and each reads the other's."""
    first = TokenCipher(NEW).encrypt("token-value")
    assert first is not None and first.startswith(PREFIX)
    with pytest.raises(InvalidToken):
        Fernet(base64.urlsafe_b64encode(hashlib.sha256(NEW.encode()).digest())).decrypt(
            first.split("$", 2)[2].encode()
        )
    crypto._writer.cache_clear()  # as if another process: a salt of its own
    second = TokenCipher(NEW).encrypt("token-value")
    assert second is not None and second.split("$")[1] != first.split("$")[1]
    assert TokenCipher(NEW).decrypt(first) == TokenCipher(NEW).decrypt(second) == "token-value"


def test_tokens_stored_by_the_first_scheme_stay_readable(sqlite_url: str) -> None:
    """A row written before the upgrade (unsalted scheme) loads with the same key."""
    with session_scope(sqlite_url) as session:
        session.add(
            Token(
                credential="items:source",
                access_token=legacy_encrypt(NEW, "legacy-access"),
                refresh_token=legacy_encrypt(NEW, "legacy-refresh"),
                refresh_count=0,
                failure_count=0,
            )
        )
    stored = TokenStore(sqlite_url, "items:source", TokenCipher(NEW)).load()
    assert stored is not None
    assert (stored.access_token, stored.refresh_token) == ("legacy-access", "legacy-refresh")


def test_rotation_reads_old_keys_and_writes_under_the_new() -> None:
    """With IHUB_SECRET_KEY_OLD the old ciphertexts read; new ones need the new key."""
    salted, legacy = TokenCipher(OLD).encrypt("a"), legacy_encrypt(OLD, "b")
    rotating = TokenCipher(NEW, [OLD])
    assert (rotating.decrypt(salted), rotating.decrypt(legacy)) == ("a", "b")
    with pytest.raises(ConfigError, match="IHUB_SECRET_KEY_OLD"):
        TokenCipher(NEW).decrypt(salted)
    written = rotating.encrypt("c")
    assert TokenCipher(NEW).decrypt(written) == "c"
    with pytest.raises(ConfigError):
        TokenCipher(OLD).decrypt(written)
    settings = settings_from_env({"IHUB_SECRET_KEY": NEW, "IHUB_SECRET_KEY_OLD": f" {OLD}, x,"})
    assert settings.secret_key_old == (OLD, "x")


def test_rotate_key_command_reencrypts_every_stored_token(sqlite_url: str, tmp_path: Path) -> None:
    """`ihub auth rotate-key` rewrites salted and first-scheme rows; then the new key alone
    reads them all, and a second run has nothing to do."""
    with TokenStore(sqlite_url, "a:source", TokenCipher(OLD)).locked() as locked:
        locked.save(StoredToken(access_token="acc-a", refresh_token="ref-a"))
    with session_scope(sqlite_url) as session:
        session.add(
            Token(
                credential="b:sink",
                access_token=legacy_encrypt(OLD, "acc-b"),
                refresh_token=None,
                refresh_count=0,
                failure_count=0,
            )
        )
    env = {
        "IHUB_DATABASE_URL": sqlite_url,
        "IHUB_HOME": str(tmp_path),
        "IHUB_CONFIG": str(tmp_path / "none.yaml"),
        "IHUB_SECRET_KEY": NEW,
        "IHUB_SECRET_KEY_OLD": OLD,
    }
    result = CliRunner().invoke(main, ["auth", "rotate-key"], env=env)
    assert result.exit_code == 0, result.output
    assert "2 credential(s) re-encrypted" in result.output
    alone = TokenCipher(NEW)
    a = TokenStore(sqlite_url, "a:source", alone).load()
    b = TokenStore(sqlite_url, "b:sink", alone).load()
    assert a is not None and (a.access_token, a.refresh_token) == ("acc-a", "ref-a")
    assert b is not None and (b.access_token, b.refresh_token) == ("acc-b", None)
    with session_scope(sqlite_url) as session:
        raw = [r.access_token for r in session.scalars(select(Token))]
    assert all(value.startswith(PREFIX) for value in raw)
    again = CliRunner().invoke(main, ["auth", "rotate-key"], env=env)
    assert "0 credential(s) re-encrypted" in again.output


def test_rotate_key_without_the_old_key_fails_clearly(sqlite_url: str, tmp_path: Path) -> None:
    """Rotating without listing the previous key stops with the decryption error, exit 2."""
    with TokenStore(sqlite_url, "a:source", TokenCipher(OLD)).locked() as locked:
        locked.save(StoredToken(access_token="acc-a", refresh_token="ref-a"))
    env = {
        "IHUB_DATABASE_URL": sqlite_url,
        "IHUB_HOME": str(tmp_path),
        "IHUB_CONFIG": str(tmp_path / "none.yaml"),
        "IHUB_SECRET_KEY": NEW,
    }
    result = CliRunner().invoke(main, ["auth", "rotate-key"], env=env)
    assert result.exit_code == 2
    assert "IHUB_SECRET_KEY_OLD" in result.output


def test_check_warns_about_a_placeholder_key(tmp_path: Path) -> None:
    """`ihub check` on an OAuth config says the compose placeholder key would be refused."""
    import yaml

    auth = {"type": "oauth2", "token_url": "https://idp.example/t", "client_id": "c"}
    auth["client_secret"] = "s"
    source = {"url": "https://api.example/i", "auth": auth}
    raw = {"integrations": {"items": {"source": source, "sink": {"table": "items"}}}}
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    env = {"IHUB_SECRET_KEY": "change-me-to-a-long-random-string"}
    result = CliRunner().invoke(main, ["check", "--config", str(path)], env=env)
    assert result.exit_code == 0
    assert "warning: IHUB_SECRET_KEY is a placeholder" in result.stderr
    ok = CliRunner().invoke(main, ["check", "--config", str(path)], env={"IHUB_SECRET_KEY": NEW})
    assert "warning" not in ok.stderr
