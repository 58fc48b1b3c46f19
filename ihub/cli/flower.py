"""``ihub flower``: Flower on the same broker, its history capped, never exposed without a login.

Flower is auxiliary (PITFALLS 37-42): it knows only the events it saw while running, keeps them in
memory (``--max_tasks`` caps it; a restart forgets them) and serves ``/metrics`` and
``/healthcheck`` without authentication even when basic auth is on. The status page reads the
database instead and never calls Flower. Tasks carry row ids (``process_record``) or an
integration name (``fetch_delta``), so Flower shows no payload and no secret.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline.errors import ConfigError
from pipeline.settings import settings_from_env

DEFAULTS = (
    "--max_tasks=10000",
    "--purge_offline_workers=600",
    "--inspect_timeout=5000",
    "--address=127.0.0.1",
)


def prepare(user_args: Sequence[str], env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """Flower's arguments and environment; refuses a non-loopback address without auth.

    ``IHUB_FLOWER_BASIC_AUTH=user:password`` becomes Flower's own ``FLOWER_BASIC_AUTH``, so the
    password is in the environment, not on the command line that ``ps`` shows.
    """
    from ihub.web.server import is_loopback

    args, env = [*DEFAULTS, *user_args], dict(env)
    basic_auth = settings_from_env(env).flower_basic_auth
    if basic_auth and not env.get("FLOWER_BASIC_AUTH"):
        env["FLOWER_BASIC_AUTH"] = basic_auth
    address = option(args, "address") or ""
    if option(args, "unix_socket") or is_loopback(address):
        return args, env
    oauth = option(args, "auth_provider") or env.get("FLOWER_AUTH_PROVIDER")
    if not (option(args, "basic_auth") or env.get("FLOWER_BASIC_AUTH") or oauth):
        raise ConfigError(
            f"ihub flower: --address={address or '(all interfaces)'} is not loopback: give "
            "--basic-auth=user:password or set IHUB_FLOWER_BASIC_AUTH (and put TLS in front; "
            "Flower serves /metrics and /healthcheck without authentication)"
        )
    return args, env


def option(args: Sequence[str], name: str) -> str | None:
    """The last ``--name=value`` (tornado spells names with - or _ alike), or None."""
    found = None
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("-").replace("-", "_") == name:
            found = value
    return found
