"""The demo source against real HTTP on 127.0.0.1: token grants, faults and keyset paging."""

from __future__ import annotations

import base64
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote_plus

import pytest
import requests

from ihub.demo.source import DemoSource, DemoSourceOptions, main

TIMEOUT = 5
CID, SECRET = "demo-client", "demo-secret"
Factory = Callable[..., DemoSource]


@pytest.fixture
def make_source() -> Iterator[Factory]:
    started: list[DemoSource] = []

    def make(**options: Any) -> DemoSource:
        source = DemoSource(DemoSourceOptions(**options)).start()
        started.append(source)
        return source

    yield make
    for source in started:
        source.stop()


@pytest.fixture
def source(make_source: Factory) -> DemoSource:
    return make_source()


def basic(client_id: str = CID, secret: str = SECRET) -> str:
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def token(src: DemoSource, *, auth: str = "body", **form: str) -> requests.Response:
    headers = {"Authorization": basic()} if auth == "basic" else {}
    if auth == "body":
        form = {"client_id": CID, "client_secret": SECRET, **form}
    return requests.post(src.token_url, data=form, headers=headers, timeout=TIMEOUT)


def access_token(src: DemoSource) -> str:
    return token(src, grant_type="client_credentials").json()["access_token"]


def api(src: DemoSource, tok: str | None, path: str = "", **params: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    return requests.get(src.records_url + path, params=params, headers=headers, timeout=TIMEOUT)


def page_all(src: DemoSource, tok: str, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        body = api(src, tok, **params, **({"cursor": cursor} if cursor else {})).json()
        out += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            return out


def key(record: dict[str, Any]) -> tuple[datetime, str]:
    return datetime.fromisoformat(record["updated_at"]), record["id"]


def test_client_credentials_echoes_scope_and_no_store(source: DemoSource) -> None:
    """client_credentials returns a Bearer token, echoes scope and forbids caching."""
    resp = token(source, grant_type="client_credentials", scope="read", audience="x", resource="y")
    body = resp.json()
    assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store"
    assert body["token_type"] == "Bearer" and body["scope"] == "read"
    assert body["expires_in"] == 300 and "refresh_token" not in body
    assert source.counters["client_credentials_grants"] == 1
    assert source.counters["token_requests"] == 1


def test_client_credentials_can_issue_refresh_token(make_source: Factory) -> None:
    """issue_refresh_token_for_client_credentials adds a usable refresh token."""
    src = make_source(issue_refresh_token_for_client_credentials=True)
    refresh = token(src, grant_type="client_credentials").json()["refresh_token"]
    assert token(src, grant_type="refresh_token", refresh_token=refresh).status_code == 200


def test_password_grant_and_bad_credentials(source: DemoSource) -> None:
    """password grant issues access + refresh tokens; bad credentials are invalid_grant."""
    ok = token(source, grant_type="password", username="demo-user", password="demo-pass")
    assert ok.status_code == 200 and {"access_token", "refresh_token"} <= ok.json().keys()
    bad = token(source, grant_type="password", username="demo-user", password="nope")
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
    assert source.counters["password_grants"] == 2
    assert source.counters["invalid_grant"] == 1


def test_refresh_rotation_invalidates_old_token(make_source: Factory) -> None:
    """A rotated refresh token works once; reusing it is a counted invalid_grant."""
    src = make_source(initial_refresh_token="boot")
    first = token(src, grant_type="refresh_token", refresh_token="boot").json()
    assert first["refresh_token"] != "boot"
    reuse = token(src, grant_type="refresh_token", refresh_token="boot")
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    assert "error_description" in reuse.json()
    second = token(src, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert second.status_code == 200
    assert src.counters["refresh_grants"] == 3 and src.counters["invalid_grant"] == 1


def test_refresh_without_rotation_keeps_token(make_source: Factory) -> None:
    """Without rotation the same refresh token keeps working and none is returned."""
    src = make_source(initial_refresh_token="boot", rotate_refresh_tokens=False)
    for _ in range(2):
        resp = token(src, grant_type="refresh_token", refresh_token="boot")
        assert resp.status_code == 200 and "refresh_token" not in resp.json()


def test_unknown_and_missing_grant_types(source: DemoSource) -> None:
    """Unsupported grants get unsupported_grant_type, a missing one invalid_request."""
    resp = token(source, grant_type="authorization_code", code="x")
    assert resp.status_code == 400 and resp.json()["error"] == "unsupported_grant_type"
    assert token(source).json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("style", "auth", "status"),
    [
        ("basic", "basic", 200),
        ("basic", "body", 401),
        ("body", "body", 200),
        ("body", "basic", 401),
        ("any", "basic", 200),
        ("any", "body", 200),
        ("any", "none", 401),
    ],
)
def test_client_auth_styles(make_source: Factory, style: str, auth: str, status: int) -> None:
    """The token endpoint accepts only the configured client authentication style."""
    src = make_source(client_auth=style)
    resp = token(src, auth=auth, grant_type="client_credentials")
    assert resp.status_code == status
    if status == 401:
        assert resp.json()["error"] == "invalid_client"
        assert src.counters["invalid_client"] == 1


def test_basic_auth_is_form_url_decoded(make_source: Factory) -> None:
    """Basic credentials are url-decoded (RFC 6749 2.3.1); a wrong secret is invalid_client."""
    src = make_source(client_id="my client:1", client_secret="s&p=c/t+%", client_auth="basic")
    form = {"grant_type": "client_credentials"}
    ok = requests.post(
        src.token_url,
        data=form,
        timeout=TIMEOUT,
        headers={"Authorization": basic("my client:1", "s&p=c/t+%")},
    )
    assert ok.status_code == 200
    bad = requests.post(
        src.token_url,
        data=form,
        timeout=TIMEOUT,
        headers={"Authorization": basic("my client:1", "wrong")},
    )
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"


@pytest.mark.parametrize(("style", "expected"), [("int", 300), ("str", "300"), ("missing", None)])
def test_expires_in_styles(make_source: Factory, style: str, expected: object) -> None:
    """expires_in appears as int, string or not at all, as configured."""
    body = token(make_source(expires_in_style=style), grant_type="client_credentials").json()
    assert body.get("expires_in") == expected


def test_access_token_expires_server_side(make_source: Factory) -> None:
    """An access token stops working after token_lifetime even if expires_in is absent."""
    src = make_source(token_lifetime=0.5, expires_in_style="missing")
    tok = access_token(src)
    assert api(src, tok).status_code == 200
    deadline = time.monotonic() + 5
    while api(src, tok).status_code == 200:
        assert time.monotonic() < deadline, "token never expired"
        time.sleep(0.1)
    assert api(src, tok).headers["WWW-Authenticate"].startswith("Bearer")


def test_missing_or_unknown_token_is_401(source: DemoSource) -> None:
    """The API rejects missing and unknown bearer tokens with an invalid_token challenge."""
    for tok in (None, "not-a-token"):
        resp = api(source, tok)
        assert resp.status_code == 401
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert source.counters["api_401"] == 2 and source.counters["api_requests"] == 2


def test_revoke_and_reconsent(source: DemoSource) -> None:
    """Revocation kills all issued tokens; set_refresh_token mints a working one."""
    grant = token(source, grant_type="password", username="demo-user", password="demo-pass")
    tokens = grant.json()
    source.revoke_refresh_tokens()
    assert api(source, tokens["access_token"]).status_code == 401
    old = token(source, grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert old.json()["error"] == "invalid_grant"
    new = token(source, grant_type="refresh_token", refresh_token=source.set_refresh_token())
    assert api(source, new.json()["access_token"]).status_code == 200


def test_fail_next_with_retry_after(source: DemoSource) -> None:
    """Injected failures come before auth, carry Retry-After and run out after `count`."""
    source.fail_next("/api/records", 503, 2, retry_after="2")
    for _ in range(2):
        resp = api(source, None)
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "2"
        assert resp.text == "<html>bad gateway</html>"
    assert api(source, access_token(source)).status_code == 200
    source.fail_next("/oauth/token", 429)
    assert token(source, grant_type="client_credentials").status_code == 429
    assert source.counters["injected_failures"] == 3


def test_record_shape_single_record_and_404s(source: DemoSource) -> None:
    """Records have the documented shape; single-record, healthz and unknown paths behave."""
    source.seed(3)
    tok = access_token(source)
    rec = api(source, tok, "/REC000002").json()
    assert rec["id"] == "REC000002" and rec["number"] == 2 and rec["version"] == 1
    assert rec["updated_at"].endswith("Z") and "." not in rec["updated_at"]
    assert rec["state"] in {"new", "in_progress", "resolved"} and 1 <= rec["priority"] <= 4
    assert {"category", "tags"} <= rec["details"].keys()
    assert api(source, tok, "/REC999999").status_code == 404
    missing = requests.get(source.url + "/nope", timeout=TIMEOUT)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert requests.get(source.url + "/healthz", timeout=TIMEOUT).text == "ok"


def test_fractional_timestamps_below_one_second(make_source: Factory) -> None:
    """timestamp_resolution < 1 adds fractional seconds to updated_at."""
    src = make_source(timestamp_resolution=0.001)
    assert "." in src.insert()["updated_at"]


def test_update_bumps_version_even_within_same_timestamp(make_source: Factory) -> None:
    """An update never moves updated_at backwards and always increments version."""
    src = make_source(timestamp_resolution=3600)
    rec = src.insert({"state": "new"})
    after = src.update(rec["id"], state="resolved")
    assert after["version"] == 2 and after["state"] == "resolved"
    assert after["updated_at"] >= rec["updated_at"]
    with pytest.raises(ValueError):
        src.update(rec["id"], version=7)


def test_update_many_is_update_of_each(make_source: Factory) -> None:
    """A bulk update leaves the records, and the order paging reads them in, as updating each
    record in turn does; a deleted record or a managed field is refused."""
    one_by_one, bulk = make_source(), make_source()
    start = datetime.now(UTC) - timedelta(hours=1)
    for src in (one_by_one, bulk):
        src.seed(50, start=start)
    picked = [f"REC{n:06d}" for n in (40, 3, 17, 1, 50, 22)]
    for rid in picked:
        one_by_one.update(rid, state="closed")
    assert bulk.update_many(picked, state="closed") == len(picked)
    versions = {rid: (r["version"], r["state"]) for rid, r in bulk.snapshot().items()}
    assert versions == {rid: (r["version"], r["state"]) for rid, r in one_by_one.snapshot().items()}
    assert {rid for rid, (version, _) in versions.items() if version == 2} == set(picked)
    ids = [r["id"] for r in page_all(bulk, access_token(bulk), limit=7)]
    assert ids[:-6] == [r["id"] for r in page_all(one_by_one, access_token(one_by_one))][:-6]
    assert sorted(ids[-6:]) == sorted(picked) and len(set(ids)) == 50
    with pytest.raises(ValueError):
        bulk.update_many(picked, version=9)
    bulk.delete("REC000003")
    with pytest.raises(KeyError):
        bulk.update_many(["REC000004", "REC000003"], state="new")
    assert bulk.snapshot()["REC000004"]["version"] == 1, "a refused call changed a record"


def test_keyset_paging_covers_every_record_while_data_changes(source: DemoSource) -> None:
    """Keyset paging plus a final inclusive re-query sees every id at its latest version."""
    source.seed(200, start=datetime.now(UTC) - timedelta(hours=1))
    tok = access_token(source)
    seen: list[dict[str, Any]] = []
    cursor, pages = None, 0
    while True:
        body = api(source, tok, limit=25, **({"cursor": cursor} if cursor else {})).json()
        assert [key(r) for r in body["data"]] == sorted(key(r) for r in body["data"])
        seen += body["data"]
        cursor, pages = body["next_cursor"], pages + 1
        if pages <= 3:  # change records both behind and ahead of the cursor
            for rid in (f"REC{pages:06d}", f"REC{100 + pages:06d}", f"REC{pages * 25:06d}"):
                source.update(rid, state="in_progress")
            source.insert()
        if cursor is None:
            break
    versions = [(r["id"], r["version"]) for r in seen]
    assert len(versions) == len(set(versions)), "a record version was returned twice"
    assert {("REC000001", 1), ("REC000001", 2)} <= set(versions), "moved record not seen again"
    # Updated after paging, possibly within the last page's second: an inclusive re-query from
    # the last updated_at catches it even when its id sorts before the last id.
    source.update("REC000150", state="resolved")
    versions += [
        (r["id"], r["version"])
        for r in page_all(source, tok, updated_since=seen[-1]["updated_at"], limit=25)
    ]
    latest: dict[str, int] = {}
    for rid, version in versions:
        latest[rid] = max(version, latest.get(rid, 0))
    assert latest == {rid: r["version"] for rid, r in source.snapshot().items()}


def test_offset_paging_matches_cursor_order(make_source: Factory) -> None:
    """Offset paging returns the same ordering and reports offset/limit, no cursor."""
    src = make_source(page_size_max=20)
    src.seed(45)
    tok = access_token(src)
    by_cursor = [r["id"] for r in page_all(src, tok, limit=1000)]
    by_offset: list[str] = []
    for offset in range(0, 45, 20):
        body = api(src, tok, offset=offset, limit=1000).json()
        assert body["offset"] == offset and body["limit"] == 20 and body["total"] == 45
        assert "next_cursor" not in body
        by_offset += [r["id"] for r in body["data"]]
    assert by_offset == by_cursor and len(set(by_cursor)) == 45


def test_updated_since_is_inclusive(source: DemoSource) -> None:
    """updated_since keeps records with updated_at >= it and total counts only those."""
    source.seed(60, start=datetime.now(UTC) - timedelta(minutes=10))
    tok = access_token(source)
    pivot = sorted(source.snapshot().values(), key=key)[30]["updated_at"]
    body = api(source, tok, updated_since=pivot, limit=500).json()
    since = datetime.fromisoformat(pivot)
    expected = {r["id"] for r in source.snapshot().values() if key(r)[0] >= since}
    assert body["total"] == len(expected) and {r["id"] for r in body["data"]} == expected
    assert 30 <= len(expected) < 60 and body["next_cursor"] is None


def test_bad_query_parameters_are_400(source: DemoSource) -> None:
    """Malformed cursor, timestamp or limit give 400 invalid_request, not a crash."""
    tok = access_token(source)
    for params in ({"cursor": "!!!"}, {"updated_since": "yesterday"}, {"limit": "0"}):
        resp = api(source, tok, **params)
        assert resp.status_code == 400 and resp.json()["error"] == "invalid_request"


def test_concurrent_reads_and_mutations(source: DemoSource) -> None:
    """Parallel token requests, page reads and mutations never error or lose records."""
    source.seed(300)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            tok = access_token(source)
            ids = {r["id"] for r in page_all(source, tok, limit=50)}
            assert {f"REC{i:06d}" for i in range(1, 301)} <= ids
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    rng = random.Random(1)
    for _ in range(20):
        source.mutate_random(5, rng)
    for t in threads:
        t.join(timeout=TIMEOUT * 4)
    assert not errors


def test_main_rejects_bad_arguments() -> None:
    """The standalone entry point parses its command line."""
    with pytest.raises(SystemExit):
        main(["--expires-in-style", "bogus"])
