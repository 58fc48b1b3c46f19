"""Credentials stay with their host (ARCHITECTURE invariant 8).

A next-page URL is data from the other side: a source that answers ``"next":
"https://elsewhere/x"`` (or ``//elsewhere``, an ``http://`` downgrade, ``169.254.169.254``) must
not receive the bearer token or the config's static headers. ``check_followable`` pins every
next URL to the source's own scheme, host and port, or to an ``allowed_hosts`` entry; anything
else stops the run with an error naming the URL's host. ``PinnedSession`` drops the static
headers on a redirect to another origin, as requests already does for ``Authorization``.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

import requests

from pipeline.errors import PermanentError

Origin = tuple[str, str, int]  # (scheme, host, port)
DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> Origin:
    """Scheme, lower-cased host and port (the scheme's default when none is written)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        raise PermanentError(f"not a valid URL port in {_host_of(url)!r}") from None
    return scheme, (parts.hostname or "").lower(), port or DEFAULT_PORTS.get(scheme, 0)


def allowed_origins(url: str, allowed_hosts: Iterable[str] = ()) -> frozenset[Origin]:
    """The source URL's origin, and each ``host`` or ``host:port`` of ``allowed_hosts`` on the
    same scheme (so an allowed host is never a way to downgrade to plain http)."""
    scheme, host, port = origin(url)
    found = {(scheme, host, port)}
    for entry in allowed_hosts:
        _, other, other_port = origin(f"{scheme}://{entry}")
        found.add((scheme, other, other_port))
    return frozenset(found)


def check_followable(url: str, allowed: frozenset[Origin], *, what: str) -> None:
    """Refuse a next-page URL outside ``allowed`` (before any byte is sent to it)."""
    if any(c in url for c in "\\\r\n\t") or not url.lower().startswith(("http://", "https://")):
        raise PermanentError(
            f"{what}: refusing to follow the next-page URL to host {_host_of(url)!r}: "
            "not a plain absolute http(s) URL"
        )
    target = origin(url)
    if target not in allowed:
        scheme, host, port = target
        raise PermanentError(
            f"{what}: refusing to follow the next-page URL to host {host!r} "
            f"({scheme}, port {port}): it is not the source's own scheme, host and port; "
            "list it in source.allowed_hosts if the API pages across hosts"
        )


def _host_of(url: str) -> str:
    try:
        return urlsplit(url).hostname or url[:80]
    except ValueError:
        return url[:80]


class PinnedSession(requests.Session):
    """A session whose static headers (API keys, tenant ids) never follow a redirect to
    another origin; requests itself only strips ``Authorization`` there."""

    def __init__(self, static_headers: dict[str, str]) -> None:
        super().__init__()
        self.headers.update(static_headers)
        self.static_names = tuple(static_headers)

    def rebuild_auth(
        self, prepared_request: requests.PreparedRequest, response: requests.Response
    ) -> None:
        super().rebuild_auth(prepared_request, response)  # type: ignore[no-untyped-call]
        old, new = response.request.url or "", prepared_request.url or ""
        if self.should_strip_auth(old, new):  # type: ignore[no-untyped-call]
            for name in self.static_names:
                prepared_request.headers.pop(name, None)
