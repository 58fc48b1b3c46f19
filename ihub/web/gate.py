"""Who may talk to the status page: the Host check and HTTP Basic, decided from headers alone.

The gate runs twice with the same answer: in waitress's I/O loop as soon as a request's headers
are in (``ihub.web.server``), so a refused request's body is never read, and first thing in the
WSGI app, so the app is safe under any server.

The Host check stops DNS rebinding: a page on ``evil.example`` that re-points its name at
127.0.0.1 makes the browser send ``Host: evil.example``. Accepted: the bound address, loopback
names when bound to loopback, any IP literal when bound to a wildcard address (a browser sends an
IP literal only when the page's own origin is that IP, which is no rebinding), and the configured
public names (``IHUB_WEB_PUBLIC_HOST``, e.g. the name a TLS proxy serves). Ports are not compared:
a proxy may present another one, and a rebinding always needs a foreign name.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from dataclasses import dataclass

from ihub.web.api import TEXT, Response
from pipeline.loopback import is_loopback

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def host_name(header: str) -> str:
    """``Host`` without its port, lower case; ``[::1]:8780`` gives ``::1``."""
    header = header.strip().lower().rstrip(".")
    if header.startswith("["):
        return header[1:].partition("]")[0]
    name, colon, port = header.rpartition(":")
    return name if colon and port.isdigit() else header


@dataclass(frozen=True)
class HostPolicy:
    """The Host names a server bound to ``bound`` answers to."""

    bound: str
    public: frozenset[str] = frozenset()

    def allows(self, header: str | None) -> bool:
        if header is None:  # HTTP/1.0 without Host: not a browser, so not a rebinding
            return True
        name = host_name(header)
        if not name:
            return False
        if name in self.public or name == self.bound.lower():
            return True
        if self.bound in WILDCARDS:
            return name == "localhost" or _ip(name) is not None
        if is_loopback(self.bound):
            return name in LOOPBACK_NAMES or bool((ip := _ip(name)) and ip.is_loopback)
        return False


def public_hosts(text: str) -> frozenset[str]:
    """``IHUB_WEB_PUBLIC_HOST``: comma-separated names, ports ignored."""
    return frozenset(host_name(part) for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class Gate:
    hosts: HostPolicy | None
    auth: tuple[str, str] | None

    def refusal(self, path: str, host: str | None, authorization: str | None) -> Response | None:
        """The response that refuses this request, or None to let it in."""
        if self.hosts is not None and not self.hosts.allows(host):
            return Response(
                "421 Misdirected Request",
                TEXT,
                b"unknown Host header: this server answers to its own address and the names "
                b"in IHUB_WEB_PUBLIC_HOST",
            )
        if path != "/healthz" and not self.authorized(authorization or ""):
            return Response(
                "401 Unauthorized",
                TEXT,
                b"authentication required",
                [("WWW-Authenticate", 'Basic realm="ihub", charset="UTF-8"')],
            )
        return None

    def authorized(self, header: str) -> bool:
        if self.auth is None:
            return True
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        expected_user, expected_password = self.auth
        user_ok = hmac.compare_digest(user.encode(), expected_user.encode())
        return hmac.compare_digest(password.encode(), expected_password.encode()) and user_ok
