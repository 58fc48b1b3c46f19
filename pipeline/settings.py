"""Process settings from the environment, read when asked (never at import).

IHUB_HOME            where the embedded default keeps its files (default ./.ihub)
IHUB_DATABASE_URL    system of record (default sqlite:///$IHUB_HOME/ihub.db)
IHUB_BROKER_URL      Celery broker (default: the embedded redis-server under $IHUB_HOME)
IHUB_CONFIG          integration definitions (default ./integrations.yaml)
IHUB_SECRET_KEY      encrypts tokens at rest; required unless IHUB_DEMO=1
IHUB_RETENTION_DAYS  done records older than this are pruned (default 7; dead ones are kept)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    broker_url: str | None
    config_path: str
    secret_key: str | None
    reconcile_after: float
    process_time_limit: float
    fetch_time_limit: float
    retention_days: float = 7.0

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url is None


def settings_from_env(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    home = Path(env.get("IHUB_HOME", ".ihub")).absolute()
    database_url = env.get("IHUB_DATABASE_URL") or f"sqlite:///{home / 'ihub.db'}"
    return Settings(
        home=home,
        database_url=database_url,
        broker_url=env.get("IHUB_BROKER_URL") or None,
        config_path=env.get("IHUB_CONFIG", "integrations.yaml"),
        secret_key=env.get("IHUB_SECRET_KEY") or None,
        reconcile_after=_number(env, "IHUB_RECONCILE_AFTER", 300.0),
        process_time_limit=_number(env, "IHUB_PROCESS_TIME_LIMIT", 300.0),
        fetch_time_limit=_number(env, "IHUB_FETCH_TIME_LIMIT", 1800.0),
        retention_days=_number(env, "IHUB_RETENTION_DAYS", 7.0),
    )


def _number(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(
            f"environment: {name}: expected a number of seconds, got {raw!r}"
        ) from None
    if value <= 0:
        raise ConfigError(f"environment: {name}: expected a positive number, got {raw!r}")
    return value
