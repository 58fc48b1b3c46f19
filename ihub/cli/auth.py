"""``ihub auth ...``: credentials of integrations, and resuming a paused one."""

from __future__ import annotations

import json
from typing import Any

import click


@click.group()
def auth() -> None:
    """Credentials of integrations."""


@auth.command("set")
@click.argument("name")
@click.option(
    "--refresh-token",
    prompt=True,
    hide_input=True,
    help="a new refresh token (prompted, hidden, when not given)",
)
@click.option("--sink", "side", flag_value="sink", help="the target's credential")
@click.option("--source", "side", flag_value="source", default=True, help="the source's (default)")
def auth_set(name: str, refresh_token: str, side: str) -> None:
    """Store a new refresh token for NAME, resume it, and send its waiting records again."""
    from models.tokens import StoredToken, TokenStore
    from pipeline.auth.crypto import TokenCipher
    from pipeline.hub import credential_name
    from pipeline.settings import settings_from_env

    settings = settings_from_env()
    credential = credential_name(name, side)
    store = TokenStore(settings.database_url, credential, TokenCipher.from_settings(settings))
    with store.locked() as locked:
        current = locked.current
        fresh = StoredToken(refresh_token=refresh_token.strip(), seed_hash=current.seed_hash)
        locked.save(fresh, refreshed=False)
    sent = _resume(name)
    click.echo(f"{credential}: refresh token stored; resumed; {sent} record(s) sent again")


@auth.command("resume")
@click.argument("name")
def auth_resume(name: str) -> None:
    """Resume NAME after fixing its credentials in the config (a secret, a password)."""
    click.echo(f"{name}: resumed; {_resume(name)} record(s) sent again")


def _resume(name: str) -> int:
    from pipeline import sync
    from pipeline.hub import Hub
    from tasks.app import get_app
    from tasks.records import publish_records

    app = get_app()
    return sync.resume(Hub.from_env(), name, lambda ids: publish_records(app, ids))


@auth.command("rotate-key")
def auth_rotate_key() -> None:
    """Re-encrypt every stored token under IHUB_SECRET_KEY, reading with IHUB_SECRET_KEY_OLD.

    Then IHUB_SECRET_KEY_OLD can be removed from every worker."""
    from models.tokens import rewrap_all
    from pipeline.auth.crypto import TokenCipher
    from pipeline.errors import ConfigError
    from pipeline.settings import settings_from_env

    settings = settings_from_env()
    try:
        changed = rewrap_all(settings.database_url, TokenCipher.from_settings(settings))
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    click.echo(f"{changed} credential(s) re-encrypted under IHUB_SECRET_KEY")


@auth.command("status")
@click.option("--json", "as_json", is_flag=True)
def auth_status(as_json: bool) -> None:
    """Every stored credential: expiry, refreshes, failures (never the tokens themselves)."""
    from models.tokens import token_health
    from pipeline.settings import settings_from_env

    rows: list[dict[str, Any]] = token_health(settings_from_env().database_url)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(
            f"{row['credential']}: expires_at={row['expires_at']} refreshes={row['refresh_count']}"
            f" failures={row['failure_count']} last_error={row['last_error']}"
        )
