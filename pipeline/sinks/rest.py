"""The REST sink: one request per record to another system's API, with the same OAuth 2.0
machinery as the sources (shared token, single-flight refresh, one replay on a 401).

Idempotency comes from the target: a PUT by key is naturally idempotent, and the record's
version travels in the body so a target that compares versions can refuse a stale write; that
refusal (409/412 by default) means a newer version is already there, which is success.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import requests

from pipeline.config import RestSinkConfig
from pipeline.errors import PermanentError, classify_exception, classify_response


class RestSink:
    def __init__(
        self, name: str, config: RestSinkConfig, auth: requests.auth.AuthBase | None = None
    ) -> None:
        self.name = name
        self.config = config
        self.session = requests.Session()
        self.session.auth = auth
        self.session.headers.update(config.headers)

    def upsert(self, record: dict[str, Any], version: str) -> bool:
        """Send ``record``; True when the target took it, False when it already had newer."""
        key = record.get(self.config.key)
        if key is None or key == "":
            raise PermanentError(f"sink {self.name}: record has no key field {self.config.key!r}")
        url = self.config.url.replace("{id}", quote(str(key), safe=""))
        body = dict(record)
        if self.config.version_field:
            body[self.config.version_field] = version
        what = f"sink {self.name}"
        try:
            response = self.session.request(
                self.config.method, url, json=body, timeout=self.config.timeout
            )
        except requests.RequestException as exc:
            raise classify_exception(exc, what=what) from None
        with response:
            if response.status_code in self.config.stale_status:
                return False
            error = classify_response(response, what=what)
            if error is not None:
                raise error
        return True
