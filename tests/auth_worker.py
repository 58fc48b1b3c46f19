"""One worker process for the single-flight tests in test_auth.py.

Usage: python tests/auth_worker.py '<json spec>'. The worker builds its own TokenManager over
the shared database, prints ``ready``, waits for a line on stdin (the start signal shared by
every worker), does its work and prints one JSON line with what it saw.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import requests
from pydantic import SecretStr

from models.tokens import TokenStore
from pipeline.auth.crypto import TokenCipher
from pipeline.auth.manager import TokenManager
from pipeline.auth.requests_auth import OAuth2Auth
from pipeline.config_auth import OAuth2Config


def build(spec: dict[str, Any]) -> TokenManager:
    config = OAuth2Config(
        token_url=spec["token_url"],
        client_id=spec["client_id"],
        client_secret=SecretStr(spec["client_secret"]),
        grant_type=spec["grant_type"],
        refresh_token=SecretStr(spec["seed"]) if spec.get("seed") else None,
        refresh_margin=spec["margin"],
        timeout=10,
    )
    store = TokenStore(spec["db_url"], spec["credential"], TokenCipher(spec["key"]))
    return TokenManager(spec["credential"], config, store)


def once(manager: TokenManager, spec: dict[str, Any]) -> dict[str, Any]:
    started = time.time()
    token = manager.access_token()
    ended = time.time()
    status = requests.get(
        spec["records_url"],
        params={"limit": 1},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ).status_code
    return {"token": token, "status": status, "started": started, "ended": ended}


def loop(manager: TokenManager, spec: dict[str, Any]) -> dict[str, Any]:
    session = requests.Session()
    session.auth = OAuth2Auth(manager)
    statuses: list[int] = []
    started = time.time()
    for _ in range(spec["calls"]):
        response = session.get(spec["records_url"], params={"limit": 1}, timeout=10)
        statuses.append(response.status_code)
        time.sleep(spec["interval"])
    return {"statuses": statuses, "started": started, "ended": time.time()}


def main() -> None:
    spec = json.loads(sys.argv[1])
    manager = build(spec)
    manager.store.load()  # connect now, so the start signal finds every worker warmed up
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        result = (loop if spec["mode"] == "loop" else once)(manager, spec)
    except Exception as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
