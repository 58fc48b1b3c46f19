"""The dead-letter pages: a filtered list with selection, one letter, and the requeue confirmation.

Requeue is a POST form carrying the CSRF token; it always passes through ``confirm`` first. The
same filter travels in hidden fields, so the list comes back as it was after the action.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from ihub.web.pages import esc, iso, local_time, page, short
from models.dashboard import DeadFilter


def dead_list(
    result: dict[str, Any],
    flt: DeadFilter,
    facets: dict[str, list[str]],
    csrf: str,
    *,
    offset: int,
    limit: int,
    notice: str = "",
    flower_url: str | None = None,
) -> str:
    total, items = int(result["total"]), result["items"]
    rows = "".join(
        f'<tr><td><input type="checkbox" name="row_id" value="{int(d["row_id"])}" '
        f'aria-label="select {int(d["row_id"])}"></td><td>{esc(iso(d["last_failed_at"]))}</td>'
        f"<td>{esc(d['integration'])}</td>"
        f'<td><a href="/dead/{int(d["row_id"])}">{esc(d["record_id"])}</a></td>'
        f"<td>{esc(d['error_class'])}</td><td>{esc(short(d['message']))}</td>"
        f"<td>{int(d['attempts'])}</td><td>{int(d['requeue_count'])}</td></tr>"
        for d in items
    )
    table = (
        '<table id="dead-letters"><tr><th></th><th>Last failed (UTC)</th><th>Integration</th>'
        "<th>Record</th><th>Error class</th><th>Message</th><th>Attempts</th><th>Requeued</th>"
        f"</tr>{rows}</table>"
        if rows
        else '<p class="muted">No dead letters match.</p>'
    )
    buttons = (
        f'<p><button name="scope" value="selected" id="requeue-selected">Requeue selected</button> '
        f'<button name="scope" value="filter" id="requeue-matching">Requeue all {total} '
        "matching</button></p>"
        if rows
        else ""
    )
    body = (
        (f'<p class="notice" id="notice">{esc(notice)}</p>' if notice else "")
        + _filter_form(flt, facets)
        + f'<p><b data-figure="dead-total">{total}</b> dead letter(s) match.</p>'
        + f'<form method="post" action="/dead/requeue">{_hidden(csrf, flt)}{table}{buttons}</form>'
        + _pager(flt, offset, limit, total)
    )
    return page("ihub: dead letters", body, flower_url=flower_url)


def _filter_form(flt: DeadFilter, facets: dict[str, list[str]]) -> str:
    def select(name: str, values: list[str], current: str | None) -> str:
        options = "".join(
            f'<option value="{esc(v)}"{" selected" if v == current else ""}>{esc(v)}</option>'
            for v in values
        )
        return (
            f'<select name="{name}" id="f-{name}"><option value="">any</option>{options}</select>'
        )

    return (
        '<form class="filter" method="get" action="/dead">'
        f"<label>Integration {select('integration', facets['integrations'], flt.integration)}"
        f"</label><label>Error class "
        f"{select('error_class', facets['error_classes'], flt.error_class)}</label>"
        f'<label>Failed since (UTC) <input name="since" value="{esc(local_time(flt.since))}" '
        'type="datetime-local"></label>'
        f'<label>until <input name="until" value="{esc(local_time(flt.until))}" '
        'type="datetime-local"></label><button>Filter</button> <a href="/dead">clear</a></form>'
    )


def _pager(flt: DeadFilter, offset: int, limit: int, total: int) -> str:
    links = []
    if offset > 0:
        links.append(
            f'<a href="/dead?{filter_query(flt, offset=max(offset - limit, 0))}">newer</a>'
        )
    if offset + limit < total:
        links.append(f'<a href="/dead?{filter_query(flt, offset=offset + limit)}">older</a>')
    shown = f"{offset + 1}-{min(offset + limit, total)} of {total}" if total else ""
    return f"<p>{shown} {' · '.join(links)}</p>"


def dead_detail(dead: dict[str, Any], csrf: str, *, flower_url: str | None = None) -> str:
    long_fields = ("message", "payload", "traceback", "id_map")
    rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>"
        for k, v in dead.items()
        if k not in long_fields
    )
    payload = json.dumps(dead["payload"], indent=2, sort_keys=True, ensure_ascii=False, default=str)
    action = (
        f'<form method="post" action="/dead/requeue">{_hidden(csrf, DeadFilter())}'
        f'<input type="hidden" name="row_id" value="{int(dead["row_id"])}">'
        '<button name="scope" value="selected" id="requeue-one">Requeue…</button></form>'
        if dead.get("status") == "dead"
        else f'<p class="muted">Status now: {esc(dead.get("status"))}</p>'
    )
    body = (
        f"<h2>Dead letter {int(dead['row_id'])}</h2>{action}<table>{rows}</table>"
        f"<h3>Message</h3><pre>{esc(dead['message'])}</pre>"
        f"<h3>Target record (id map)</h3><pre>{esc(_id_map(dead.get('id_map')))}</pre>"
        f"<h3>Payload (secrets masked)</h3><pre>{esc(payload)}</pre>"
        f"<h3>Traceback</h3><pre>{esc(dead.get('traceback') or 'none recorded')}</pre>"
    )
    return page(f"ihub: dead letter {int(dead['row_id'])}", body, flower_url=flower_url)


def _id_map(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "none: the target has no record of it known to ihub"
    return " · ".join(f"{k}: {v}" for k, v in entry.items())


def confirm(*, scope: str, row_ids: list[int], flt: DeadFilter, count: int, csrf: str) -> str:
    """The confirmation step of a requeue: the same form again, with confirm=yes."""
    what = (
        f"{count} selected dead letter(s)"
        if scope == "selected"
        else f"every dead letter matching {_describe(flt)}: {count} now"
    )
    ids = "".join(f'<input type="hidden" name="row_id" value="{int(i)}">' for i in row_ids)
    button = (
        f'<button class="danger" id="confirm" name="confirm" value="yes">Yes, requeue {count}'
        "</button>"
        if count
        else '<p class="muted">Nothing to requeue.</p>'
    )
    body = (
        f"<h2>Requeue {esc(what)}?</h2><p>They go back to pending and are published to the "
        "workers again. The same as <code>ihub dead requeue</code>.</p>"
        f'<form method="post" action="/dead/requeue">{_hidden(csrf, flt)}'
        f'<input type="hidden" name="scope" value="{esc(scope)}">{ids}{button} '
        f'<a href="/dead?{filter_query(flt)}" id="cancel">Cancel</a></form>'
    )
    return page("ihub: confirm requeue", body, flower_url=None)


def _hidden(csrf: str, flt: DeadFilter) -> str:
    fields = {"csrf": csrf, **filter_fields(flt)}
    return "".join(
        f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">' for k, v in fields.items() if v
    )


def filter_fields(flt: DeadFilter) -> dict[str, str]:
    return {
        "integration": flt.integration or "",
        "error_class": flt.error_class or "",
        "since": local_time(flt.since),
        "until": local_time(flt.until),
    }


def filter_query(flt: DeadFilter, **extra: Any) -> str:
    fields = {k: v for k, v in filter_fields(flt).items() if v}
    return urlencode({**fields, **{k: v for k, v in extra.items() if v}})


def _describe(flt: DeadFilter) -> str:
    parts = [f"{k}={v}" for k, v in filter_fields(flt).items() if v]
    return ", ".join(parts) if parts else "no filter (all)"
