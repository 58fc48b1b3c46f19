"""The per-process engine: settings, config, and one source, sink and token manager per
integration, built on first use (so a forked worker builds its own)."""

from __future__ import annotations

from dataclasses import dataclass, field

from models.tokens import TokenStore
from pipeline.auth.crypto import TokenCipher
from pipeline.auth.manager import TokenManager
from pipeline.auth.requests_auth import OAuth2Auth
from pipeline.config import HubConfig, IntegrationConfig, OAuth2Config, load_config
from pipeline.settings import Settings, settings_from_env
from pipeline.sinks import SqlSink
from pipeline.sources import RestSource


@dataclass
class Hub:
    settings: Settings
    config: HubConfig
    _sources: dict[str, RestSource] = field(default_factory=dict)
    _sinks: dict[str, SqlSink] = field(default_factory=dict)
    _tokens: dict[str, TokenManager] = field(default_factory=dict)

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
                auth = OAuth2Auth(self.token_manager(name, config.auth))
            self._sources[name] = RestSource(name, config, auth)
        return self._sources[name]

    def token_manager(self, name: str, config: OAuth2Config) -> TokenManager:
        if name not in self._tokens:
            store = TokenStore(
                self.database_url, f"{name}:source", TokenCipher(self.settings.secret_key)
            )
            self._tokens[name] = TokenManager(name, config, store)
        return self._tokens[name]

    def sink(self, name: str) -> SqlSink:
        if name not in self._sinks:
            config = self.integration(name).sink
            self._sinks[name] = SqlSink(config.url or self.database_url, config.table, config.key)
        return self._sinks[name]
