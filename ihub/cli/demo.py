"""``ihub demo``: the whole pipeline on one machine with no services at all."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

DEMO_CONFIG = Path(__file__).parents[1] / "demo" / "demo.yaml"
DEMO_INTEGRATIONS = ("incidents", "incidents_itsm")  # into SQLite, into a ServiceNow-style API


@click.command()
@click.option("--once", is_flag=True, help="one delta cycle, wait for every record, exit")
@click.option("--records", default=500, show_default=True, help="records the demo source holds")
@click.option("--web-port", default=8780, show_default=True, help="status page port (0: any)")
@click.option("--concurrency", default=2, show_default=True)
@click.option("--timeout", default=300.0, show_default=True, help="seconds --once may wait")
def demo(once: bool, records: int, web_port: int, concurrency: int, timeout: float) -> None:
    """Start a demo OAuth 2.0 source, a worker, beat and the status page, and sync."""
    from ihub.demo.servicenow import ServiceNowOptions, ServiceNowTarget
    from ihub.demo.source import DemoSource, DemoSourceOptions

    page_options = _page_options()  # a bad status-page setting fails here, before anything starts
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below
    from pipeline.settings import settings_from_env

    home = settings_from_env().home / "demo"
    _fresh_home(home)
    source = DemoSource(DemoSourceOptions(token_lifetime=60)).start()
    source.seed(records)
    itsm = ServiceNowTarget(ServiceNowOptions(mandatory=("short_description",))).start()
    env = _demo_env(home, source.url, source.options.client_secret)
    env |= {
        "IHUB_DEMO_SN_URL": itsm.url,
        "IHUB_DEMO_SN_SECRET": itsm.authority.options.client_secret,
    }
    os.environ.update(env)
    from ihub.cli.runner import start_celery, stop
    from models.migrate import upgrade

    settings = settings_from_env()
    upgrade(settings.database_url)
    from tasks.app import get_app
    from tasks.broker import start_broker

    app = get_app()
    start_broker(app)  # the demo owns the embedded broker: stopped in the finally below
    worker = start_celery(
        "worker",
        ["--concurrency", str(concurrency), "--loglevel", "WARNING", "--hostname", "demo@%h"],
        dict(os.environ),
    )
    page = _start_page(settings, web_port, page_options)
    click.echo(f"demo source: {source.records_url} (OAuth 2.0 token endpoint {source.token_url})")
    click.echo(f"ITSM target: {itsm.table_url('incident')} (ServiceNow-style, own OAuth 2.0)")
    click.echo(f"database:    {_safe(settings.database_url)}")
    click.echo(f"broker:      {_safe(str(app.conf.broker_url))}")
    click.echo(f"status page: {page.url}")
    try:
        if once:
            sys.exit(_run_once(settings, app, timeout))
        _run_forever(settings, source, dict(os.environ))
    finally:
        stop(worker)
        page.stop()
        itsm.stop()
        source.stop()
        if not settings.broker_url:
            from tasks.broker import stop_embedded

            stop_embedded(settings.home)


def _fresh_home(home: Path) -> None:
    from tasks.broker import stop_embedded

    if home.exists():
        stop_embedded(home)
        shutil.rmtree(home)
    home.mkdir(parents=True)


def _demo_env(home: Path, url: str, client_secret: str) -> dict[str, str]:
    env = {
        "IHUB_HOME": str(home),
        "IHUB_CONFIG": str(DEMO_CONFIG),
        "IHUB_DEMO_URL": url,
        "IHUB_DEMO_SECRET": client_secret,
        "IHUB_SECRET_KEY": os.environ.get("IHUB_SECRET_KEY") or secrets.token_urlsafe(32),
    }
    env.setdefault("IHUB_RECONCILE_AFTER", os.environ.get("IHUB_RECONCILE_AFTER", "60"))
    return env


def _page_options() -> dict[str, Any]:
    """The page's limits and public hosts (a ConfigError is one line: IhubGroup)."""
    from ihub.web.server import limits_from_env, public_hosts_from_env

    env = dict(os.environ)
    return {"limits": limits_from_env(env), "public_hosts": public_hosts_from_env(env)}


def _start_page(settings: Any, port: int, options: dict[str, Any]) -> Any:
    from ihub.cli.common import broker_url
    from ihub.web.server import serve

    broker, due_in = broker_url(settings), settings.reconcile_after
    try:
        return serve(settings.database_url, broker, port=port, due_in=due_in, **options)
    except OSError:
        return serve(settings.database_url, broker, port=0, due_in=due_in, **options)


def _run_once(settings: Any, app: Any, timeout: float) -> int:
    from ihub.cli.runner import wait_for_run
    from pipeline import sync
    from pipeline.hub import Hub
    from tasks.records import publisher

    hub = Hub.from_env()
    finished = True
    for name in DEMO_INTEGRATIONS:
        result = sync.fetch_delta(hub, name, publisher(app, hub, name), owner="demo")
        click.echo(
            f"{name}: fetched {result.fetched} record(s) in {result.pages} page(s); "
            f"staged {result.staged}"
        )
        if result.run_id is None:
            click.echo(f"fetch did not run: {result.status}", err=True)
            return 1
        fetched = result.fetched
        counts = wait_for_run(
            settings.database_url,
            result.run_id,
            timeout=timeout,
            progress=lambda c, fetched=fetched: _progress(c, fetched),
        )
        click.echo("")
        finished &= counts["done"] + counts["dead"] == result.staged
    _summary(settings)
    return 0 if finished else 1


def _progress(counts: dict[str, int], fetched: int) -> None:
    line = " ".join(f"{k}={v}" for k, v in counts.items())
    click.echo(f"\rfetched={fetched} {line}   ", nl=False)


def _summary(settings: Any) -> None:
    from ihub.report import collect_status

    for item in collect_status(settings.database_url, None)["integrations"]:
        counts, run = item["counts"], item["last_run"] or {}
        watermark = (item["watermark"] or {}).get("updated")
        click.echo(
            f"{item['name']}: fetched={run.get('fetched', 0)} done={counts['done']} "
            f"retrying={counts['retrying']} dead={counts['dead']} "
            f"pending={counts['pending'] + counts['processing']} watermark={watermark}"
        )


def _run_forever(settings: Any, source: Any, env: dict[str, str]) -> None:
    import random

    from ihub.cli.runner import start_celery, stop

    beat = start_celery(
        "beat",
        ["--loglevel", "WARNING", "--schedule", str(settings.home / "celerybeat-schedule")],
        env,
    )
    stopping = threading.Event()

    def mutate() -> None:
        rng = random.Random()
        while not stopping.wait(2.0):
            source.mutate_random(5, rng)

    threading.Thread(target=mutate, daemon=True).start()
    click.echo("syncing every 5 s while the source changes; Ctrl-C stops")
    try:
        while True:
            _summary(settings)
            time.sleep(3)
    except KeyboardInterrupt:
        click.echo("stopping")
    finally:
        stopping.set()
        stop(beat)


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]
