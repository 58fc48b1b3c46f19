"""Attach the shared token to each request; on a 401, refresh once and replay once."""

from __future__ import annotations

from typing import Any

import requests
from requests.auth import AuthBase

from pipeline.auth.manager import TokenManager

_REPLAYED = "_ihub_replayed"


class OAuth2Auth(AuthBase):
    def __init__(self, manager: TokenManager) -> None:
        self.manager = manager

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.manager.access_token()}"
        request.register_hook("response", self._on_response)
        return request

    def _on_response(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        request = response.request
        if response.status_code != 401 or getattr(request, _REPLAYED, False):
            return response
        rejected = str(request.headers.get("Authorization", "")).removeprefix("Bearer ")
        _ = response.content  # drain and release the connection before anything can raise
        response.close()
        fresh = self.manager.invalidate(rejected)
        replay = request.copy()
        replay.headers["Authorization"] = f"Bearer {fresh}"
        setattr(replay, _REPLAYED, True)
        retried = response.connection.send(replay, **kwargs)
        retried.history.append(response)
        retried.request = replay
        return retried
