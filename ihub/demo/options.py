"""The demo source's knobs and the shape of its answers, shared by its modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CHOICES = {"expires_in_style": ["int", "str", "missing"], "client_auth": ["basic", "body", "any"]}

# (status, JSON-able payload or text, extra headers)
Response = tuple[int, Any, dict[str, str]]


@dataclass
class DemoSourceOptions:
    """Knobs that reproduce the behaviours real providers differ on."""

    client_id: str = "demo-client"
    client_secret: str = "demo-secret"
    username: str = "demo-user"
    password: str = "demo-pass"
    initial_refresh_token: str | None = None
    token_lifetime: float = 300.0
    expires_in_style: str = "int"  # "int" | "str" | "missing"
    rotate_refresh_tokens: bool = True
    client_auth: str = "any"  # "basic" | "body" | "any"
    issue_refresh_token_for_client_credentials: bool = False
    page_size_max: int = 500
    timestamp_resolution: float = 1.0
    require_auth: bool = True  # False: the API answers without a bearer token (tests)
    soft_delete: bool = False  # True: delete() flags the record (deleted: true) and keeps it
    page_delay: float = 0.0  # seconds each API response waits (a slow source, for kill tests)

    def __post_init__(self) -> None:
        """Fail fast on a typo rather than silently serving the default behaviour."""
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {getattr(self, name)!r}")


def error(status: int, code: str, description: str | None = None, **headers: str) -> Response:
    """An OAuth-style JSON error answer."""
    payload = {"error": code}
    if description:
        payload["error_description"] = description
    return status, payload, dict(headers)
