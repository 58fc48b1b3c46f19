"""The dead-letter pages: a filtered list with selection, one letter, and the requeue confirmation.

Requeue is a POST form carrying the CSRF token; it always passes through ``confirm`` first. The
same filter travels in hidden fields, so the list comes back as it was after the action. The
HTML is in ``templates/`` (autoescaped); this module computes what the templates show.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from ihub.web.pages import page_context
from ihub.web.render import local_time, render
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
    total = int(result["total"])
    return render(
        "dead_list.html",
        **page_context("ihub: dead letters", flower_url=flower_url),
        items=result["items"],
        total=total,
        flt=flt,
        fields=filter_fields(flt),
        facets=facets,
        csrf=csrf,
        notice=notice,
        offset=offset,
        limit=limit,
        pager=_pager(flt, offset, limit, total),
    )


def _pager(flt: DeadFilter, offset: int, limit: int, total: int) -> list[tuple[str, str]]:
    links = []
    if offset > 0:
        links.append(("newer", filter_query(flt, offset=max(offset - limit, 0))))
    if offset + limit < total:
        links.append(("older", filter_query(flt, offset=offset + limit)))
    return links


def dead_detail(dead: dict[str, Any], csrf: str, *, flower_url: str | None = None) -> str:
    row_id = int(dead["row_id"])
    payload = json.dumps(dead["payload"], indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return render(
        "dead_detail.html",
        **page_context(f"ihub: dead letter {row_id}", flower_url=flower_url),
        dead=dead,
        row_id=row_id,
        payload=payload,
        csrf=csrf,
        fields=filter_fields(DeadFilter()),
    )


def confirm(*, scope: str, row_ids: list[int], flt: DeadFilter, count: int, csrf: str) -> str:
    """The confirmation step of a requeue: the same form again, with confirm=yes."""
    what = (
        f"{count} selected dead letter(s)"
        if scope == "selected"
        else f"every dead letter matching {_describe(flt)}: {count} now"
    )
    return render(
        "confirm.html",
        **page_context("ihub: confirm requeue", flower_url=None),
        what=what,
        scope=scope,
        row_ids=row_ids,
        count=count,
        csrf=csrf,
        fields=filter_fields(flt),
        query=filter_query(flt),
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
