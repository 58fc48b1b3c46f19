"""How ihub authenticates to a source or a target: OAuth 2.0 grants, or nothing."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from pipeline.loopback import is_loopback


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OAuth2Config(Strict):
    type: Literal["oauth2"] = "oauth2"
    grant_type: Literal["client_credentials", "refresh_token", "password"] = "client_credentials"
    token_url: str
    client_id: str
    client_secret: SecretStr | None = None
    client_auth: Literal["basic", "body"] = "basic"
    scope: str | None = None
    extra_params: dict[str, str] = Field(default_factory=dict)
    refresh_token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    refresh_margin: float = Field(60.0, ge=0)
    default_expires_in: float = Field(3600.0, gt=0)
    timeout: float = Field(30.0, gt=0)

    @field_validator("token_url")
    @classmethod
    def _no_clear_text_secret(cls, value: str) -> str:
        """The client secret goes in the request: plain http only where it cannot leave the
        machine (the demo, tests)."""
        parts = urlsplit(value)
        if parts.scheme.lower() not in ("http", "https"):
            raise ValueError(f"expected an https:// URL, got {value!r}")
        if parts.scheme.lower() == "http" and not is_loopback(parts.hostname or ""):
            raise ValueError(
                f"plain http:// is allowed for loopback hosts only, got host {parts.hostname!r}"
                " (the client secret would travel in clear): use https://"
            )
        return value

    @model_validator(mode="after")
    def _grant_needs(self) -> OAuth2Config:
        if self.grant_type == "password" and (self.username is None or self.password is None):
            raise ValueError("grant_type 'password' needs 'username' and 'password'")
        if self.grant_type == "client_credentials" and self.client_secret is None:
            raise ValueError("grant_type 'client_credentials' needs 'client_secret'")
        return self


class NoAuth(Strict):
    type: Literal["none"]


AuthConfig = Annotated[OAuth2Config | NoAuth, Field(discriminator="type")]
