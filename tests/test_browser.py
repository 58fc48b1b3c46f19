"""A real browser: headless Chromium (Debian's package) driven by Selenium against a running
`ihub web` (the production server, waitress) on Postgres and Redis. It reads the widgets,
requeues a dead letter with clicks, and the row goes back to pending with its task on the broker.

Set IHUB_UPDATE_SCREENSHOT=1 to rewrite docs/dashboard.png from the fixed-clock dashboard.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from models import migrate, rollups
from models.db import session_scope
from models.schema import DeadLetter, IntegrationState, StagedRecord
from pipeline.timefmt import utcnow
from tests import web_seed
from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1300",
)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Chromium with a fresh profile; Selenium Manager is never asked to download anything."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (pip install -e '.[test]')")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        unavailable("Chromium is missing (apt-get install -y chromium chromium-driver)")
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "driver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _seed_today(url: str) -> int:
    """8 done today (100..800 ms) and 2 dead today, whatever the time; the first dead row id."""
    now = utcnow()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)

    def ago(k: int) -> Any:  # k minutes ago, but never before UTC midnight
        return now - min(timedelta(minutes=k), (now - midnight) * k / 20)

    rows = [
        StagedRecord(
            integration="crm",
            record_id=f"c{k}",
            version="v",
            digest="",
            payload=json.dumps({"id": k}),
            status="done",
            attempts=1,
            deliveries=0,
            finished_at=ago(k),
            duration_ms=100.0 * k,
        )
        for k in range(1, 9)
    ]
    dead = [
        StagedRecord(
            integration="crm",
            record_id=f"d{k}",
            version="v",
            digest="",
            payload=json.dumps({"id": k, "password": "hunter2"}),
            status="dead",
            attempts=4,
            deliveries=0,
            finished_at=ago(k),
            error_class="PermanentError",
            last_error=f"HTTP 422 for d{k}",
        )
        for k in (9, 10)
    ]
    with session_scope(url) as session:
        session.add_all([*rows, *dead])
        session.flush()
        for row in dead:
            when = row.finished_at
            session.add(
                DeadLetter(
                    record_row_id=row.id,
                    integration="crm",
                    record_id=row.record_id,
                    version="v",
                    error_class="PermanentError",
                    message=row.last_error,
                    attempts=4,
                    first_failed_at=when,
                    last_failed_at=when,
                )
            )
        session.add(IntegrationState(name="crm", status="active", last_success_at=ago(1)))
        session.flush()
        rollups.rebuild(session)  # the figures, as the outcomes would have counted them
        return dead[0].id


@pytest.fixture
def ihub_web(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[str, str, int]]:
    """`ihub web` as a real process (local time zone far from UTC); (url, db url, dead row id)."""
    row_id = _seed_today(pg_url)
    port = _free_port()
    env = {
        **os.environ,
        "IHUB_DATABASE_URL": pg_url,
        "IHUB_BROKER_URL": redis_url,
        "IHUB_HOME": str(tmp_path / "home"),
        "IHUB_CONFIG": str(tmp_path / "none.yaml"),
        "IHUB_FLOWER_URL": "http://127.0.0.1:5555/",
        "TZ": "Pacific/Kiritimati",
    }
    for name in ("IHUB_WEB_USER", "IHUB_WEB_PASSWORD"):
        env.pop(name, None)
    log = (tmp_path / "web.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "ihub", "web", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ihub web did not start: {(tmp_path / 'web.log').read_text()}")
            time.sleep(0.1)
        served_by = requests.get(url + "/healthz", timeout=5).headers.get("Server")
        assert served_by == "ihub", f"not the production server (Server: {served_by})"
        yield url, pg_url, row_id
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)
        log.close()


def wait_for(driver: Any, element_id: str) -> Any:
    """The element once the page that has it is loaded (a form submit returns before that)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    located = expected_conditions.presence_of_element_located((By.ID, element_id))
    return WebDriverWait(driver, 15).until(located)


def figure(driver: Any, name: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, f'[data-figure="{name}"]').text)


def test_browser_reads_widgets_and_requeues_with_clicks(
    browser: Any, ihub_web: tuple[str, str, int], redis_url: str
) -> None:
    """The widgets show the database's figures; select, requeue, confirm: the row is pending."""
    from selenium.webdriver.common.by import By

    url, database_url, row_id = ihub_web
    browser.get(url + "/")
    assert browser.title == "ihub status"
    assert figure(browser, "crm-state") == "running"
    assert figure(browser, "success-today-rate") == "80.0%"
    assert (figure(browser, "success-today-done"), figure(browser, "success-today-dead")) == (
        "8",
        "2",
    )
    assert figure(browser, "processing-today-avg") == "450.0 ms"
    assert figure(browser, "processing-today-p95") == "1.00 s"  # 800 ms, to its bucket's bound
    assert figure(browser, "errors-today-total") == "2"
    assert figure(browser, "throughput-done") == "8"
    assert figure(browser, "queue-ihub.process") == "0"
    assert browser.find_element(By.CSS_SELECTOR, "#success-rate svg.donut").is_displayed()
    assert browser.find_element(By.CSS_SELECTOR, "#throughput svg.line").is_displayed()

    browser.find_element(By.LINK_TEXT, "Dead letters").click()
    wait_for(browser, "dead-letters")
    assert figure(browser, "dead-total") == "2"
    browser.find_element(By.CSS_SELECTOR, f'input[name="row_id"][value="{row_id}"]').click()
    browser.find_element(By.ID, "requeue-selected").click()
    confirm = wait_for(browser, "confirm")
    assert confirm.text == "Yes, requeue 1"
    confirm.click()
    assert wait_for(browser, "notice").text == "1 dead letter(s) requeued."
    assert figure(browser, "dead-total") == "1"
    with session_scope(database_url) as session:
        row = session.get(StagedRecord, row_id)
        assert row is not None and (row.status, row.attempts) == ("pending", 0)
    broker = redis.Redis.from_url(redis_url)
    try:
        assert broker.llen("ihub.process") == 1  # published: the workers will take it
    finally:
        broker.close()


def test_dashboard_screenshot(browser: Any, tmp_path: Path, redis_url: str) -> None:
    """The known-rows dashboard renders every widget in Chromium (the README's screenshot)."""
    from selenium.webdriver.common.by import By

    from ihub.web.server import serve

    url = f"sqlite:///{tmp_path}/shot.db"
    migrate.upgrade(url)
    web_seed.seed(url)
    broker = redis.Redis.from_url(redis_url)
    broker.rpush("ihub.process", *range(12))
    broker.rpush("ihub.fetch", 1)
    handle = serve(
        url, redis_url, port=0, clock=lambda: web_seed.NOW, flower_url="http://127.0.0.1:5555/"
    )
    try:
        browser.set_window_size(1400, 1420)
        browser.get(handle.url + "/")
        for widget in ("success-rate", "processing-time", "queues", "throughput", "errors-today"):
            assert browser.find_element(By.ID, widget).is_displayed(), widget
        assert figure(browser, "success-window-rate") == "86.7%"
        assert figure(browser, "queue-ihub.process") == "12"
        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        if os.environ.get("IHUB_UPDATE_SCREENSHOT") == "1":
            shutil.copy(shot, ROOT / "docs" / "dashboard.png")
    finally:
        handle.stop()
        broker.close()
