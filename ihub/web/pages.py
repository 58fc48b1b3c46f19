"""The status page's HTML: plain server-rendered pages, no script at all.

Record ids, messages and payloads come from third parties: every value goes through ``_e``
(HTML escaping) on its way into the page. Figures carry ``data-figure`` names so that a test (or
a person with the inspector) can find them. Times are UTC, and ages are taken against the
status's own ``generated_at``, so one render is consistent.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

from ihub.web import charts

WINDOWS = (1, 6, 24, 168)
REFRESH_SECONDS = 10
STATUSES = ("pending", "processing", "retrying", "done", "dead")
STATE_LABELS = {
    "running": "running",
    "paused": "paused: re-authorisation required",
    "failing": "failing",
}

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#222}
header{background:#1f2937;color:#fff;padding:10px 20px;display:flex;gap:18px;align-items:center}
header h1{margin:0;font-size:20px}header a{color:#93c5fd}header .muted{color:#9ca3af}
main{padding:16px 20px}h2{font-size:16px;margin:0 0 8px}
.cards,.widgets{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:12px}
.card,.widget{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px 16px}
.card{min-width:300px}.card.paused{border:2px solid #dc2626}.card.failing{border:2px solid #d97706}
.state{border-radius:10px;padding:1px 8px;color:#fff;font-size:12px;font-weight:normal}
.state.running{background:#16a34a}.state.paused{background:#dc2626}.state.failing{background:#d97706}
.alert{color:#b91c1c;font-weight:bold}.muted{color:#666}.notice{background:#dcfce7;padding:8px}
.badge{display:inline-block;border-radius:10px;padding:1px 8px;margin:2px;color:#fff;font-size:12px}
.pending{background:#6b7280}.processing{background:#2563eb}.retrying{background:#d97706}
.done{background:#16a34a}.dead{background:#dc2626}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 10px;margin:0}dt{color:#666}
dd{margin:0}figure{display:inline-block;margin:0 16px 0 0;text-align:center}
table{border-collapse:collapse;background:#fff;width:100%}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
pre{background:#fff;border:1px solid #ddd;padding:10px;overflow:auto;white-space:pre-wrap}
form.filter{margin-bottom:10px}form.filter label{margin-right:10px}
button{padding:4px 10px;cursor:pointer}button.danger{background:#dc2626;color:#fff;border:0}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}
"""


def page(title: str, body: str, *, flower_url: str | None, note: str = "", head: str = "") -> str:
    links = [("/", "Overview"), ("/dead", "Dead letters"), ("/api", "API"), ("/metrics", "Metrics")]
    if _is_http(flower_url):
        links.append((str(flower_url), "Flower"))
    nav = "".join(f'<a href="{esc(href)}">{esc(text)}</a>' for href, text in links)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{head}'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>ihub</h1>{nav}<span class="muted">{esc(note)}</span></header>'
        f"<main>{body}</main></body></html>"
    )


def dashboard(status: dict[str, Any], *, flower_url: str | None, hours: float) -> str:
    now = _parse(status["generated_at"])
    cards = "".join(_card(item, now) for item in status["integrations"])
    widgets = (
        _success(status["success_rate"], hours)
        + _processing(status["processing_time"])
        + _queues(status["queues"])
    )
    body = (
        f'<div class="cards">{cards or "<p class=muted>No integrations yet.</p>"}</div>'
        f'<div class="widgets">{widgets}</div>'
        f'<div class="widgets">{_throughput(status["throughput"])}</div>'
        f"{_errors(status['errors_today'])}"
        f"{_dead_letter_actions(status.get('dead_letter_actions') or [])}"
    )
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
    note = f"generated {status['generated_at']} (UTC)"
    return page("ihub status", body, flower_url=flower_url, note=note, head=refresh)


def _card(item: dict[str, Any], now: datetime) -> str:
    name, state = item["name"], item["state"]
    reason = (
        f'<p class="alert">{esc(item["status_reason"] or "no reason recorded")}</p>'
        if state == "paused"
        else ""
    )
    mark = item["watermark"]
    watermark = (
        f"{esc(mark['updated'])} / {esc(mark['id'])} (lag {_span(item['watermark_lag_seconds'])})"
        if mark["updated"]
        else '<span class="muted">none yet</span>'
    )
    tokens = "".join(_token(t) for t in item["tokens"]) or '<span class="muted">none</span>'
    counts = "".join(
        f'<span class="badge {s}">{s} <span data-figure="{esc(name)}-{s}">'
        f"{int(item['counts'].get(s, 0))}</span></span>"
        for s in STATUSES
    )
    return (
        f'<div class="card {esc(state)}" data-integration="{esc(name)}"><h2>{esc(name)} '
        f'<span class="state {esc(state)}" data-figure="{esc(name)}-state">'
        f"{esc(STATE_LABELS.get(state, state))}</span></h2>{reason}<dl>"
        f"<dt>Last successful fetch</dt><dd>{_when(item['last_success_at'], now)}</dd>"
        f"<dt>Watermark</dt><dd>{watermark}</dd><dt>Token</dt><dd>{tokens}</dd>"
        f"<dt>Records</dt><dd>{counts}</dd></dl></div>"
    )


def _token(token: dict[str, Any]) -> str:
    left = token["expires_in_seconds"]
    expiry = (
        "no expiry recorded"
        if left is None
        else f"expires {esc(token['expires_at'])} "
        + (
            f"(in {_span(left)})"
            if left > 0
            else f'<span class="alert">({_span(-left)} ago)</span>'
        )
    )
    error = (
        f'<br><span class="alert">{esc(token["last_error"])}</span>' if token["last_error"] else ""
    )
    return (
        f"<div>{esc(token['credential'])}: {expiry}; refreshes {int(token['refresh_count'])}, "
        f"failures {int(token['failure_count'])}{error}</div>"
    )


def _success(rate: dict[str, Any], hours: float) -> str:
    today, window = rate["today"], rate["window"]
    windows = " ".join(
        f'<a href="/?{urlencode({"hours": h})}">{_hours(h)}</a>'
        if h != hours
        else f"<b>{_hours(h)}</b>"
        for h in WINDOWS
    )
    return (
        '<div class="widget" id="success-rate"><h2>Success rate</h2>'
        + _donut_figure(today, "today", "Today (UTC)")
        + _donut_figure(window, "window", f"Last {_hours(hours)}")
        + f'<div class="legend"><span class="done"></span>done<span class="dead"></span>dead'
        f" · window: {windows}</div></div>"
    )


def _donut_figure(counts: dict[str, Any], key: str, label: str) -> str:
    done, dead = int(counts["done"]), int(counts["dead"])
    rate = "n/a" if counts["rate"] is None else f"{100 * counts['rate']:.1f}%"
    return (
        f"<figure>{charts.donut(done, dead, label=label)}<figcaption>{esc(label)}: "
        f'<span data-figure="success-{key}-rate">{rate}</span><br>'
        f'<span data-figure="success-{key}-done">{done}</span> done, '
        f'<span data-figure="success-{key}-dead">{dead}</span> dead</figcaption></figure>'
    )


def _processing(times: dict[str, Any]) -> str:
    rows = "".join(
        f'<tr><th>{label}</th><td data-figure="processing-{key}-count">{times[key]["count"]}</td>'
        f'<td data-figure="processing-{key}-avg">{ms(times[key]["avg_ms"])}</td>'
        f'<td data-figure="processing-{key}-p95">{ms(times[key]["p95_ms"])}</td></tr>'
        for key, label in (
            ("today", "Today"),
            ("window", f"Last {_hours(times['window']['hours'])}"),
        )
    )
    return (
        '<div class="widget" id="processing-time"><h2>Average processing time</h2>'
        f"<table><tr><th></th><th>done</th><th>average</th><th>p95</th></tr>{rows}</table></div>"
    )


def _queues(depths: dict[str, int] | None) -> str:
    if depths is None:
        inner = '<p class="muted">unavailable (no broker answered)</p>'
    else:
        peak = max([1, *depths.values()])
        inner = (
            "<table>"
            + "".join(
                f'<tr><th>{esc(name)}</th><td data-figure="queue-{esc(name)}">{int(n)}</td>'
                f"<td>{charts.bar(int(n), peak)}</td></tr>"
                for name, n in depths.items()
            )
            + "</table>"
        )
    return f'<div class="widget" id="queues"><h2>Queue depth</h2>{inner}</div>'


def _throughput(data: dict[str, Any]) -> str:
    points = data["per_minute"]
    labels = [p["minute"][11:16] for p in points]
    done = [p["done"] for p in points]
    dead = [p["dead"] for p in points]
    chart = charts.line_chart(
        labels,
        [("done", charts.DONE, done), ("dead", charts.DEAD, dead)],
        title=f"Records per minute, last {_hours(data['hours'])}",
    )
    return (
        f'<div class="widget" id="throughput"><h2>Throughput: records per minute, last '
        f"{_hours(data['hours'])} (UTC)</h2>{chart}"
        f'<div class="legend"><span class="done"></span>done '
        f'<b data-figure="throughput-done">{sum(done)}</b>'
        f'<span class="dead"></span>dead <b data-figure="throughput-dead">{sum(dead)}</b></div>'
        "</div>"
    )


def _errors(errors: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{esc(e['at'])}</td><td>{esc(e['integration'])}</td>"
        f"<td>{_record_link(e)}</td><td>{esc(e['status'])}</td><td>{esc(e['error_class'])}</td>"
        f"<td>{esc(short(e['message']))}</td><td>{int(e['attempts'])}</td></tr>"
        for e in errors["items"]
    )
    shown = len(errors["items"])
    more = f" (newest {shown} shown)" if shown < errors["total"] else ""
    table = (
        "<table><tr><th>Time (UTC)</th><th>Integration</th><th>Record</th><th>Now</th>"
        f"<th>Error class</th><th>Message</th><th>Attempts</th></tr>{rows}</table>"
        if rows
        else '<p class="muted">No errors today.</p>'
    )
    return (
        '<div class="widget" id="errors-today"><h2>Integration errors today</h2>'
        f'<p><b data-figure="errors-today-total">{int(errors["total"])}</b> since '
        f"{esc(errors['since'])}{more}</p>{table}</div>"
    )


def _dead_letter_actions(actions: list[dict[str, Any]]) -> str:
    """Requeues, redrive-policy runs and purges of dead letters, newest first."""
    rows = "".join(
        f"<tr><td>{esc(a['at'])}</td><td>{esc(a['action'])}</td><td>{esc(a['actor'])}</td>"
        f"<td>{esc(a['integration'] or 'all')}</td><td>{int(a['count'])}</td></tr>"
        for a in actions
    )
    table = (
        "<table><tr><th>Time (UTC)</th><th>Action</th><th>By</th><th>Integration</th>"
        f"<th>Records</th></tr>{rows}</table>"
        if rows
        else '<p class="muted">No requeue, redrive or purge yet.</p>'
    )
    return f'<div class="widget" id="dead-letter-actions"><h2>Dead-letter actions</h2>{table}</div>'


def _record_link(error: dict[str, Any]) -> str:
    if error["status"] != "dead":
        return esc(error["record_id"])
    return f'<a href="/dead/{int(error["row_id"])}">{esc(error["record_id"])}</a>'


def ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def iso(value: Any) -> str:
    return value.isoformat() + "Z" if isinstance(value, datetime) else str(value or "")


def local_time(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M") if moment else ""


def _hours(hours: float) -> str:
    return f"{hours / 24:g} d" if hours >= 48 else f"{hours:g} h"


def _span(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    seconds = int(seconds)
    for unit, name in ((86400, "d"), (3600, "h"), (60, "m")):
        if abs(seconds) >= unit:
            return f"{seconds // unit}{name}"
    return f"{max(seconds, 0)}s"


def _when(iso_z: str | None, now: datetime) -> str:
    if not iso_z:
        return '<span class="muted">never</span>'
    return f"{esc(iso_z)} ({_span((now - _parse(iso_z)).total_seconds())} ago)"


def _parse(iso_z: str) -> datetime:
    return datetime.fromisoformat(iso_z.removesuffix("Z"))


def short(message: str | None) -> str:
    message = message or ""
    return message if len(message) <= 120 else message[:119] + "…"


def esc(value: Any) -> str:
    return escape("" if value is None else str(value))


def _is_http(url: str | None) -> bool:
    """Only http(s) links: a ``javascript:`` URL in configuration must not become a link."""
    return bool(url) and str(url).lower().startswith(("http://", "https://"))
