"""The status page over real HTTP: widgets, escaping, requeue with confirmation, CSRF, auth."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from ihub.web import actions
from ihub.web.server import ServerHandle, auth_from_env, check_exposure, serve
from models import leases, migrate
from models.dashboard import DeadFilter
from models.db import session_scope
from models.schema import DeadLetter, IntegrationState, StagedRecord
from pipeline.errors import ConfigError
from tests import web_seed
from tests.web_seed import NOW

TIMEOUT = 10
NASTY = "<script>alert('x')</script> & more"
NASTY_ID = "<img src=x onerror=alert(1)>"
REASON = "refresh token revoked <b>by admin</b>"


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[str, dict[str, int]]:
    url = f"sqlite:///{tmp_path}/web.db"
    migrate.upgrade(url)
    return url, web_seed.seed(url)


@pytest.fixture
def published() -> list[list[int]]:
    return []


@pytest.fixture
def server(
    seeded: tuple[str, dict[str, int]], published: list[list[int]]
) -> Iterator[ServerHandle]:
    handle = serve(
        seeded[0],
        None,
        port=0,
        clock=lambda: NOW,
        publish=published.append,
        flower_url="http://127.0.0.1:5555/",
    )
    yield handle
    handle.stop()


@pytest.fixture
def nasty(tmp_path: Path) -> Iterator[tuple[ServerHandle, int]]:
    """A server over rows whose ids, messages and reasons are hostile HTML."""
    url = f"sqlite:///{tmp_path}/nasty.db"
    migrate.upgrade(url)
    with session_scope(url) as session:
        row = StagedRecord(
            integration="crm",
            record_id=NASTY_ID,
            version="v1",
            digest="",
            payload=json.dumps({"name": "Ada", "note": "</pre><script>", "token": "abc123"}),
            status="dead",
            attempts=5,
            deliveries=0,
            finished_at=NOW,
            error_class="ValueError",
            last_error=NASTY,
        )
        session.add(row)
        session.flush()
        session.add(
            DeadLetter(
                record_row_id=row.id,
                integration="crm",
                record_id=NASTY_ID,
                version="v1",
                error_class="ValueError",
                message=NASTY,
                traceback="Traceback (most recent call last):\n  boom",
                attempts=5,
                first_failed_at=NOW,
                last_failed_at=NOW,
            )
        )
        session.add(IntegrationState(name="crm", status="reauth_required", status_reason=REASON))
        row_id = row.id
    handle = serve(url, None, port=0, clock=lambda: NOW)
    yield handle, row_id
    handle.stop()


def figures(html: str) -> dict[str, str]:
    return dict(re.findall(r'data-figure="([^"]+)">([^<]*)<', html))


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)


def status_of(url: str, row_id: int) -> str:
    with session_scope(url) as session:
        row = session.get(StagedRecord, row_id)
        assert row is not None
        return row.status


def test_dashboard_shows_every_widget_with_its_figures(server: ServerHandle) -> None:
    """Overview, success rate, processing time, throughput and errors today, with the numbers."""
    html = requests.get(server.url + "/", timeout=TIMEOUT).text
    found = figures(html)
    expected = {
        "crm-state": "running",
        "erp-state": "paused: re-authorisation required",
        "hr-state": "failing",
        "crm-done": "25",
        "crm-retrying": "2",
        "crm-dead": "3",
        "success-today-rate": "87.5%",
        "success-today-done": "21",
        "success-today-dead": "3",
        "success-window-rate": "86.7%",
        "success-window-done": "26",
        "processing-today-avg": "100.2 ms",
        "processing-today-p95": "250.0 ms",
        "processing-window-p95": "1.00 s",
        "errors-today-total": "3",
        "throughput-done": "20",
        "throughput-dead": "2",
    }
    assert {k: found.get(k) for k in expected} == expected
    assert html.count('<svg class="donut"') == 2 and html.count('<svg class="line"') == 1
    assert "<script" not in html and 'href="http://127.0.0.1:5555/"' in html
    assert "unavailable (no broker answered)" in html
    hour = figures(requests.get(server.url + "/?hours=1", timeout=TIMEOUT).text)
    assert (hour["success-window-done"], hour["success-window-dead"]) == ("20", "1")


def test_dashboard_shows_who_holds_a_running_fetch(
    seeded: tuple[str, dict[str, int]], server: ServerHandle
) -> None:
    """A running fetch shows on its card: the worker and task holding its lease; others idle."""
    holder = "worker-a pid 7 task task-42"
    assert leases.acquire(seeded[0], "fetch:crm", "task-42", ttl=60, holder=holder)
    html = requests.get(server.url + "/", timeout=TIMEOUT).text
    cards = {c.split('"')[0]: c for c in html.split('data-integration="')[1:]}
    assert f"running on {holder} since" in cards["crm"]
    assert "running on" not in cards["hr"]


def test_security_headers_and_cookie(server: ServerHandle) -> None:
    """No script may run, no site may frame the page, and the CSRF cookie is Strict/HttpOnly."""
    response = requests.get(server.url + "/dead", timeout=TIMEOUT)
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "form-action 'self'" in csp
    assert "frame-ancestors 'none'" in csp and response.headers["X-Frame-Options"] == "DENY"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("ihub_csrf=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_page_escapes_third_party_text(nasty: tuple[ServerHandle, int]) -> None:
    """Record ids, messages and reasons from sources are shown escaped, never as markup."""
    handle, row_id = nasty
    for path in ("/", "/dead", f"/dead/{row_id}"):
        html = requests.get(handle.url + path, timeout=TIMEOUT).text
        assert "<script" not in html and "<img" not in html and "<b>by admin" not in html, path
    dead = requests.get(handle.url + "/dead", timeout=TIMEOUT).text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in dead
    assert f'href="/dead/{row_id}"' in dead
    assert "refresh token revoked &lt;b&gt;by admin&lt;/b&gt;" in requests.get(handle.url).text


def test_script_in_a_dead_letter_is_escaped_on_list_and_detail(
    nasty: tuple[ServerHandle, int],
) -> None:
    """A <script> in a dead letter's error and payload shows as text on /dead and /dead/<id>."""
    handle, row_id = nasty
    listing = requests.get(handle.url + "/dead", timeout=TIMEOUT).text
    detail = requests.get(f"{handle.url}/dead/{row_id}", timeout=TIMEOUT).text
    shown = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more"
    assert f"<td>{shown}</td>" in listing and f"<pre>{shown}</pre>" in detail
    assert "&lt;img src=x onerror=alert(1)&gt;</a>" in listing
    assert "&#34;note&#34;: &#34;&lt;/pre&gt;&lt;script&gt;&#34;" in detail
    for html in (listing, detail):
        assert "<script" not in html and "<img" not in html


def test_dead_detail_shows_masked_payload_and_traceback(nasty: tuple[ServerHandle, int]) -> None:
    """/dead/<id>: the payload pretty-printed with secret-looking keys masked, the traceback."""
    handle, row_id = nasty
    html = requests.get(f"{handle.url}/dead/{row_id}", timeout=TIMEOUT).text
    assert "&#34;name&#34;: &#34;Ada&#34;" in html
    assert "&#34;token&#34;: &#34;********&#34;" in html and "abc123" not in html
    assert "&lt;/pre&gt;&lt;script&gt;" in html
    assert "Traceback (most recent call last):" in html and 'id="requeue-one"' in html


def test_requeue_one_goes_through_a_confirmation(
    server: ServerHandle, seeded: tuple[str, dict[str, int]], published: list[list[int]]
) -> None:
    """Selecting a row asks first; confirming moves it to pending and publishes its id."""
    url, ids = seeded
    row_id = ids["crm-dead-1145"]
    session = requests.Session()
    csrf = csrf_of(session.get(server.url + "/dead", timeout=TIMEOUT).text)
    form = {"csrf": csrf, "scope": "selected", "row_id": str(row_id)}
    ask = session.post(server.url + "/dead/requeue", data=form, timeout=TIMEOUT)
    assert ask.status_code == 200 and "Yes, requeue 1" in ask.text
    assert status_of(url, row_id) == "dead" and published == []
    done = session.post(
        server.url + "/dead/requeue",
        data={**form, "confirm": "yes"},
        timeout=TIMEOUT,
        allow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["Location"] == "/dead?requeued=1"
    assert status_of(url, row_id) == "pending" and published == [[row_id]]
    page = session.get(server.url + done.headers["Location"], timeout=TIMEOUT).text
    assert "1 dead letter(s) requeued." in page and figures(page)["dead-total"] == "3"


def test_requeue_all_matching_a_filter(
    server: ServerHandle, seeded: tuple[str, dict[str, int]], published: list[list[int]]
) -> None:
    """ "Requeue all matching" takes every dead letter of the filter, not only the shown page."""
    url, ids = seeded
    session = requests.Session()
    page = session.get(server.url + "/dead", params={"error_class": "PermanentError"}).text
    assert figures(page)["dead-total"] == "3" and "Requeue all 3 matching" in page
    form = {"csrf": csrf_of(page), "scope": "filter", "error_class": "PermanentError"}
    ask = session.post(server.url + "/dead/requeue", data=form, timeout=TIMEOUT)
    assert "Yes, requeue 3" in ask.text and "error_class=PermanentError" in ask.text
    done = session.post(
        server.url + "/dead/requeue", data={**form, "confirm": "yes"}, allow_redirects=False
    )
    assert done.headers["Location"] == "/dead?error_class=PermanentError&requeued=3"
    moved = sorted([ids["crm-dead-0930"], ids["crm-dead-yday"], ids["erp-dead-old"]])
    assert sorted(i for batch in published for i in batch) == moved
    assert [status_of(url, i) for i in moved] == ["pending"] * 3
    assert status_of(url, ids["crm-dead-1145"]) == "dead"


@pytest.mark.parametrize(
    ("change", "headers"),
    [
        ({"csrf": ""}, {}),
        ({"csrf": "0" * 64}, {}),
        ({}, {"Origin": "http://evil.example"}),
        ({}, {"Sec-Fetch-Site": "cross-site"}),
        ({}, {"Cookie": ""}),
    ],
    ids=["no-token", "wrong-token", "foreign-origin", "cross-site", "no-cookie"],
)
def test_requeue_refuses_cross_site_requests(
    server: ServerHandle,
    seeded: tuple[str, dict[str, int]],
    change: dict[str, str],
    headers: dict[str, str],
) -> None:
    """A POST without the token, with a wrong one, or from another origin moves nothing."""
    url, ids = seeded
    session = requests.Session()
    csrf = csrf_of(session.get(server.url + "/dead", timeout=TIMEOUT).text)
    form = {"csrf": csrf, "scope": "filter", "confirm": "yes", **change}
    if "Cookie" in headers:
        session.cookies.clear()
        headers = {}
    response = session.post(server.url + "/dead/requeue", data=form, headers=headers)
    assert response.status_code == 403
    assert status_of(url, ids["crm-dead-1145"]) == "dead"


def test_requeue_with_the_broker_down_still_moves_rows(seeded: tuple[str, dict[str, int]]) -> None:
    """A failed publish leaves the rows pending for the reconciler and says so on the page."""
    url, ids = seeded

    def broken(_: list[int]) -> None:
        raise ConnectionError("broker down")

    handle = serve(url, None, port=0, clock=lambda: NOW, publish=broken)
    try:
        session = requests.Session()
        csrf = csrf_of(session.get(handle.url + "/dead", timeout=TIMEOUT).text)
        form = {"csrf": csrf, "scope": "selected", "row_id": ids["erp-dead-old"], "confirm": "yes"}
        page = session.post(handle.url + "/dead/requeue", data=form, timeout=TIMEOUT).text
        assert "1 dead letter(s) requeued." in page and "the reconciler will publish" in page
        assert status_of(url, ids["erp-dead-old"]) == "pending"
    finally:
        handle.stop()


def test_actions_requeue_is_the_cli_and_page_function(seeded: tuple[str, dict[str, int]]) -> None:
    """One function: a dry run lists, a run moves and publishes, a second run finds nothing."""
    url, ids = seeded
    sent: list[list[int]] = []
    flt = DeadFilter(integration="crm", error_class="PermanentError")
    dry = actions.requeue(url, flt=flt, dry_run=True, publish=sent.append)
    expected = sorted([ids["crm-dead-0930"], ids["crm-dead-yday"]])
    assert dry.as_dict() == {
        "requeued": 0,
        "would_requeue": 2,
        "row_ids": expected,
        "published": False,
    }
    assert sent == []
    assert actions.requeue(url, flt=flt, publish=sent.append).row_ids == expected
    assert sent == [expected]
    assert actions.requeue(url, flt=flt, publish=sent.append).row_ids == []
    with pytest.raises(ValueError):
        actions.requeue(url, publish=sent.append)  # nothing named: refuses, moves nothing


def test_basic_auth_guards_everything_but_healthz(seeded: tuple[str, dict[str, int]]) -> None:
    """With credentials set, every path but /healthz answers 401 until they are given."""
    handle = serve(seeded[0], None, port=0, auth=("ops", "s3cret-pass"))
    try:
        for path in ("/", "/dead", "/api/status", "/metrics", "/nope"):
            response = requests.get(handle.url + path, timeout=TIMEOUT)
            assert response.status_code == 401, path
            assert response.headers["WWW-Authenticate"].startswith("Basic")
        wrong = requests.get(handle.url + "/", auth=("ops", "nope"), timeout=TIMEOUT)
        assert wrong.status_code == 401
        right = requests.get(handle.url + "/api/status", auth=("ops", "s3cret-pass"))
        assert right.status_code == 200
        assert requests.get(handle.url + "/healthz", timeout=TIMEOUT).text == "ok"
    finally:
        handle.stop()


def test_binding_beyond_loopback_needs_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """0.0.0.0 without IHUB_WEB_USER/PASSWORD is refused (API and CLI); loopback is not."""
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_exposure(host, None)
    check_exposure("0.0.0.0", ("ops", "pw"))
    for host in ("0.0.0.0", "", "192.0.2.10", "example.com"):
        with pytest.raises(ConfigError, match="IHUB_WEB_USER"):
            check_exposure(host, None)
    with pytest.raises(ConfigError):
        auth_from_env({"IHUB_WEB_USER": "ops"})
    assert auth_from_env({"IHUB_WEB_USER": "ops", "IHUB_WEB_PASSWORD": "pw"}) == ("ops", "pw")
    from ihub import cli

    monkeypatch.delenv("IHUB_WEB_USER", raising=False)
    monkeypatch.delenv("IHUB_WEB_PASSWORD", raising=False)
    monkeypatch.setenv("IHUB_CONFIG", "/nonexistent/integrations.yaml")
    result = CliRunner().invoke(cli.main, ["web", "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 2 and "IHUB_WEB_USER" in result.output


@pytest.mark.parametrize("path", ["/nope", "/dead/999999", "/dead/abc", "/api/nope", "/dead/"])
def test_unknown_paths_404(server: ServerHandle, path: str) -> None:
    """Unknown paths and unknown dead-letter ids answer 404."""
    assert requests.get(server.url + path, timeout=TIMEOUT).status_code == 404


def test_healthz_and_methods(server: ServerHandle) -> None:
    """/healthz answers ok; POST is accepted only on /dead/requeue."""
    assert requests.get(server.url + "/healthz", timeout=TIMEOUT).text == "ok"
    for path in ("/healthz", "/", "/api/status"):
        assert requests.post(server.url + path, timeout=TIMEOUT).status_code == 405
