"""Process settings: one typed object built from the ``IHUB_*`` environment, when asked.

Every variable ihub reads is a field here, and only here; README's table lists the same names.
Nothing is read at import: ``settings_from_env()`` builds the object, so a test or a command can
pass its own environment. An empty value counts as unset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)

from pipeline.auth.crypto import old_keys_from
from pipeline.errors import ConfigError

PREFIX = "IHUB_"


class Settings(BaseModel):
    """What a process needs to find its services; secrets are kept out of ``repr``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    home: Path = Field(Path(".ihub"), description="where the embedded default keeps its files")
    database_url: str = Field("", description="system of record; default sqlite under home")
    broker_url: str | None = Field(None, description="Celery broker; default: embedded Redis")
    broker_prefix: str = Field("", description="key prefix for every broker key")
    config_path: str = Field("integrations.yaml", description="integration definitions")
    secret_key: str | None = Field(None, repr=False, description="encrypts tokens at rest")
    secret_key_old: tuple[str, ...] = Field(
        (), repr=False, description="previous keys, comma-separated, read during a rotation"
    )
    reconcile_after: PositiveFloat = Field(300.0, description="seconds before a row is lost")
    process_time_limit: PositiveFloat = Field(300.0, description="hard limit of one record task")
    fetch_time_limit: PositiveFloat = Field(1800.0, description="hard limit of one fetch run")
    fetch_lease_ttl: PositiveFloat = Field(60.0, description="seconds a fetch lease outlives it")
    retention_days: PositiveFloat = Field(7.0, description="days done records are kept")
    pg_prepare: bool = Field(True, description="prepared statements on Postgres' record path")
    visibility_timeout: PositiveInt = Field(7200, description="Redis redelivery timeout")
    web_user: str = Field("", description="status page HTTP Basic user")
    web_password: str = Field("", repr=False, description="status page HTTP Basic password")
    web_public_host: str = Field("", description="comma-separated Host names the page answers")
    web_threads: PositiveInt = Field(8, description="status page worker threads")
    web_timeout: float = Field(30.0, ge=1, description="seconds a request may take to arrive")
    flower_basic_auth: str = Field("", repr=False, description="user:password for Flower")
    flower_url: str | None = Field(None, description="link from the status page to Flower")
    actor: str | None = Field(None, description="who runs a CLI action, for the action log")

    @field_validator("secret_key_old", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return tuple(old_keys_from(value)) if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        from pipeline.config_sinks import supported_database_url

        return supported_database_url(value) if value else value

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url is None


ENV_NAMES = {
    name: PREFIX + ("CONFIG" if name == "config_path" else name.upper())
    for name in Settings.model_fields
}


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    """The settings from ``env`` (default: this process's environment), validated as a whole."""
    source = os.environ if env is None else env
    values = {name: source[var] for name, var in ENV_NAMES.items() if source.get(var)}
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        problems = [_problem(str(error["loc"][0]), error) for error in exc.errors()]
        raise ConfigError("environment: invalid settings", problems) from None
    home = settings.home.absolute()
    database_url = settings.database_url or f"sqlite:///{home / 'ihub.db'}"
    return settings.model_copy(update={"home": home, "database_url": database_url})


def _problem(field: str, error: Mapping[str, Any]) -> str:
    """``<variable>: what was expected, got <value>``; a secret's value is never echoed."""
    secret = Settings.model_fields[field].repr is False
    shown = "a value (hidden)" if secret else repr(_without_password(error["input"]))
    return f"{ENV_NAMES[field]}: {error['msg'].lower()}, got {shown}"


def _without_password(value: Any) -> Any:
    """A URL's password masked (a database URL carries one); anything else as it is."""
    if not isinstance(value, str) or "://" not in value:
        return value
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(value).render_as_string(hide_password=True)
    except ArgumentError:
        return "a URL (hidden)"
