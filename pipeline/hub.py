"""The per-process engine: settings, config, and one source, sink and token manager per
integration, built on first use (so a forked worker builds its own)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import requests

from models import integrations, prepared
from models.db import normalize_url
from models.redaction import register_secret
from models.tokens import TokenStore
from pipeline import classify
from pipeline.auth.crypto import TokenCipher
from pipeline.auth.manager import TokenManager
from pipeline.auth.requests_auth import OAuth2Auth
from pipeline.config import (
    HubConfig,
    IntegrationConfig,
    RestSinkConfig,
    load_config,
    secrets_of,
)
from pipeline.config_auth import OAuth2Config
from pipeline.settings import Settings, settings_from_env
from pipeline.sinks import RestSink, Sink, SqlSink
from pipeline.sources import RestSource
from pipeline.sources.guard import allowed_origins
from pipeline.sources.ratelimit import limiter_for

PAUSE_CHECK_EVERY = 2.0


@dataclass
class Hub:
    settings: Settings
    config: HubConfig
    _sources: dict[str, RestSource] = field(default_factory=dict)
    _sinks: dict[str, Sink] = field(default_factory=dict)
    _tokens: dict[str, TokenManager] = field(default_factory=dict)
    _pause_seen: dict[str, tuple[float, bool]] = field(default_factory=dict)
    _shared_sinks: dict[str, bool] = field(default_factory=dict)
    _reads_first: bool | None = None

    def __post_init__(self) -> None:
        """Static headers, parameters and URL passwords are masked in this process's logs;
        the process prepares its record path's statements unless told not to."""
        for secret in secrets_of(self.config):
            register_secret(secret)
        prepared.use(self.settings.pg_prepare)

    @classmethod
    def from_env(cls) -> Hub:
        settings = settings_from_env()
        return cls(settings, load_config(settings.config_path))

    @property
    def database_url(self) -> str:
        return self.settings.database_url

    def integration(self, name: str) -> IntegrationConfig:
        return self.config.get(name)

    def source(self, name: str) -> RestSource:
        if name not in self._sources:
            config = self.integration(name).source
            auth = None
            if isinstance(config.auth, OAuth2Config):
                hosts = allowed_origins(config.url, config.allowed_hosts)
                if config.deletes is not None and config.deletes.endpoint is not None:
                    hosts |= allowed_origins(config.deletes.endpoint.url, config.allowed_hosts)
                auth = OAuth2Auth(self.token_manager(name, "source", config.auth), hosts)
            limiter = limiter_for(self.settings, name, config.rate_limit, config.rate_burst)
            self._sources[name] = RestSource(name, config, auth, limiter)
            self._classify(name, self._sources[name].session, "source")
        return self._sources[name]

    def token_manager(self, name: str, side: str, config: OAuth2Config) -> TokenManager:
        """One manager per credential: ``NAME:source`` and ``NAME:sink`` are separate rows."""
        credential = credential_name(name, side)
        if credential not in self._tokens:
            cipher = TokenCipher.from_settings(self.settings)
            store = TokenStore(self.database_url, credential, cipher)
            self._tokens[credential] = TokenManager(name, config, store)
        return self._tokens[credential]

    def sink(self, name: str) -> Sink:
        if name not in self._sinks:
            config = self.integration(name).sink
            if isinstance(config, RestSinkConfig):
                auth = None
                if isinstance(config.auth, OAuth2Config):
                    auth = OAuth2Auth(self.token_manager(name, "sink", config.auth))
                limiter = limiter_for(
                    self.settings, f"{name}:sink", config.rate_limit, config.rate_burst
                )
                self._sinks[name] = RestSink(
                    name, config, auth, database_url=self.database_url, limiter=limiter
                )
                self._classify(name, self._sinks[name].session, "sink")
            else:
                url = config.url or self.database_url
                self._sinks[name] = SqlSink(
                    url, config.table, config.key, max_columns=config.max_columns
                )
        return self._sinks[name]

    def sink_shares_database(self, name: str) -> bool:
        """Whether the integration's sink is a SQL table in the system-of-record database."""
        if name not in self._shared_sinks:
            sink = self.integration(name).sink
            self._shared_sinks[name] = not isinstance(sink, RestSinkConfig) and normalize_url(
                sink.url or self.database_url
            ) == normalize_url(self.database_url)
        return self._shared_sinks[name]

    def reads_before_claiming(self) -> bool:
        """Whether a first delivery reads its row before claiming it (``pipeline.sync``): on
        Postgres, when some integration's sink shares the database. Otherwise every record
        takes the written claim, and a read first would be a round trip for nothing (in a
        mix, a record of a REST sink pays that read beside its HTTP call). Asked per record,
        so answered once: a hub's config does not change."""
        if self._reads_first is None:
            self._reads_first = self.database_url.startswith("postgresql") and any(
                self.sink_shares_database(name) for name in self.config.integrations
            )
        return self._reads_first

    def _classify(self, name: str, session: requests.Session, side: str) -> None:
        hook = self.integration(name).classify
        if hook:
            classify.install(session, hook, what=f"{side} {name}")

    def paused(self, name: str) -> bool:
        """Whether the integration waits for re-authorisation; read at most every 2 s."""
        seen = self._pause_seen.get(name)
        if seen is None or time.monotonic() - seen[0] > PAUSE_CHECK_EVERY:
            seen = (time.monotonic(), integrations.is_paused(self.database_url, name))
            self._pause_seen[name] = seen
        return seen[1]

    def has_new_credentials(self, name: str) -> bool:
        """A refresh token in the config that neither side has used yet (an operator's fix)."""
        integration = self.integration(name)
        sides = [("source", integration.source.auth)]
        if isinstance(integration.sink, RestSinkConfig):
            sides.append(("sink", integration.sink.auth))
        return any(
            self.token_manager(name, side, auth).has_new_seed()
            for side, auth in sides
            if isinstance(auth, OAuth2Config)
        )

    def forget_pause_state(self, name: str) -> None:
        self._pause_seen.pop(name, None)


def credential_name(integration: str, side: str) -> str:
    return f"{integration}:{side}"
