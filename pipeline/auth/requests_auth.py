"""Attach the shared token to each request; on a 401, refresh once and replay once.

The token goes only to the host it belongs to. requests strips ``Authorization`` on a redirect
to another host, but this hook also sees the redirected response: a 401 there is answered by a
host that never received our token, and it gets no replay (the replay would hand it a fresh
one). With ``hosts`` (the source's origins), a request elsewhere gets no token at all.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.auth import AuthBase

from pipeline.auth.manager import TokenManager
from pipeline.errors import PermanentError
from pipeline.sources.guard import Origin, origin

_REPLAYED = "_ihub_replayed"


class OAuth2Auth(AuthBase):
    def __init__(self, manager: TokenManager, hosts: frozenset[Origin] | None = None) -> None:
        self.manager = manager
        self.hosts = hosts

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if not self._belongs(request):
            raise PermanentError(
                f"refusing to send the credential to host {origin(request.url or '')[1]!r}: "
                "not the host it belongs to"
            )
        request.headers["Authorization"] = f"Bearer {self.manager.access_token()}"
        request.register_hook("response", self._on_response)
        return request

    def _belongs(self, request: requests.PreparedRequest) -> bool:
        return self.hosts is None or origin(request.url or "") in self.hosts

    def _on_response(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        request = response.request
        if response.status_code != 401 or getattr(request, _REPLAYED, False):
            return response
        sent = str(request.headers.get("Authorization", ""))
        if not sent.startswith("Bearer ") or not self._belongs(request):
            return response  # a redirect took it elsewhere: that host never had our token
        rejected = sent.removeprefix("Bearer ")
        response.close()  # release the connection before anything can raise; body unread
        fresh = self.manager.invalidate(rejected)
        replay = request.copy()
        replay.headers["Authorization"] = f"Bearer {fresh}"
        setattr(replay, _REPLAYED, True)
        retried = response.connection.send(replay, **kwargs)
        retried.history.append(response)
        retried.request = replay
        return retried
