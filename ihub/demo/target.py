"""A demo target: another system's REST API behind its own OAuth 2.0 token endpoint.

It reuses the demo source's token endpoint (grants, rotation, revocation, expiry) and adds
``POST /api/items/{id}``: an upsert that keeps the highest ``_ihub_version`` and answers 409 to
an older one, as a version-aware target would. Tests read what arrived with ``items()`` and
count every write that changed something in ``counters["item_writes"]``.
"""

from __future__ import annotations

import copy
import json
from typing import Any
from urllib.parse import unquote, urlsplit

from ihub.demo.source import DemoSource, DemoSourceOptions, Response

ITEMS_PATH = "/api/items/"
VERSION_FIELD = "_ihub_version"


class DemoTarget(DemoSource):
    def __init__(self, options: DemoSourceOptions | None = None, **kwargs: Any) -> None:
        super().__init__(
            options or DemoSourceOptions(client_id="target-client", client_secret="target-secret"),
            **kwargs,
        )
        self._items: dict[str, dict[str, Any]] = {}
        self.counters.update(item_writes=0, stale_writes=0)
        self.issued: list[str] = []  # every token handed out, so tests can grep logs for them
        self.tokens.on_issue.append(self._record_issued)

    @property
    def items_url(self) -> str:
        return self.url + ITEMS_PATH + "{id}"

    def items(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._items)

    def _record_issued(self, payload: dict[str, Any]) -> None:
        self.issued += [payload[k] for k in ("access_token", "refresh_token") if k in payload]

    def _handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Response:
        path = urlsplit(raw_path).path
        if not path.startswith(ITEMS_PATH):
            return super()._handle(method, raw_path, headers, body)
        fault = self._take_fault(path)
        if fault is not None:
            return fault
        with self._lock:
            self.counters["api_requests"] += 1
            if not self.tokens.bearer_ok(headers.get("authorization")):
                self.counters["api_401"] += 1
                challenge = 'Bearer realm="ihub-demo-target", error="invalid_token"'
                return 401, {"error": "invalid_token"}, {"WWW-Authenticate": challenge}
            if method != "POST":
                return 405, {"error": "use POST"}, {"Allow": "POST"}
            return self._upsert(unquote(path[len(ITEMS_PATH) :]), body)

    def _upsert(self, item_id: str, body: bytes) -> Response:
        try:
            item = json.loads(body)
        except ValueError:
            return 400, {"error": "invalid_json"}, {}
        if not isinstance(item, dict) or not item_id:
            return 400, {"error": "expected a JSON object"}, {}
        version = str(item.get(VERSION_FIELD, ""))
        current = self._items.get(item_id)
        if current is not None and str(current.get(VERSION_FIELD, "")) >= version:
            self.counters["stale_writes"] += 1
            return 409, {"error": "stale", "current": current.get(VERSION_FIELD)}, {}
        self._items[item_id] = item
        self.counters["item_writes"] += 1
        return 200, {"id": item_id, VERSION_FIELD: version}, {}
