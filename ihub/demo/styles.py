"""The demo source's other listing styles: one per way real APIs filter and page.

Every style reads the same table, ordered by (updated_at, id), through ``DemoSource.listing``:

==========================  ==================================  ====================  =========
path                        paging                              lower bound           records
==========================  ==================================  ====================  =========
``/api/records``            cursor, offset, page, after_id      updated_since (ISO)   data
``/api/links``              ``Link`` header, rel="next"          since (ISO)           top level
``/api/feed``               next URL in the body                modified_since (s)    items
``/api/table/incident``     sysparm_limit / sysparm_offset      in sysparm_query      result
``POST /api/search``        paging.next.after in the body       filter value (ms)     results
``/api/deleted``            cursor                              updated_since (ISO)   data
==========================  ==================================  ====================  =========

``/api/table/incident`` is ServiceNow's Table API in miniature: ``sysparm_query`` takes
``sys_updated_on>=2024-05-01 12:00:00`` (also ``>``, ``=``, ``<``, ``<=``), ``sys_id>VALUE``,
``^`` for AND, ``^NQ`` for OR and ``ORDERBY...`` (the order is always updated, then id), and
times are ``YYYY-MM-DD HH:MM:SS`` in UTC. ``POST /api/search`` is a CRM search: a JSON
``filterGroups`` filter on ``hs_lastmodifieddate`` (GTE or GT, epoch milliseconds), ``limit``
and an ``after`` cursor; the record's fields sit under ``properties``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

if TYPE_CHECKING:
    from ihub.demo.source import DemoSource, Response

LINKS_PATH, FEED_PATH, TABLE_PATH = "/api/links", "/api/feed", "/api/table/incident"
SEARCH_PATH, DELETED_PATH = "/api/search", "/api/deleted"
STYLE_PATHS = {
    LINKS_PATH: "GET",
    FEED_PATH: "GET",
    TABLE_PATH: "GET",
    SEARCH_PATH: "POST",
    DELETED_PATH: "GET",
}
_TERM = re.compile(r"^(sys_updated_on|sys_id)(>=|<=|!=|>|<|=)(.*)$")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    "=": lambda a, b: a == b,
}
_US = 1_000_000


def handle(source: DemoSource, path: str, params: dict[str, str], body: bytes) -> Response:
    """One request to a style path (authorised already); ValueError becomes a 400."""
    if path == LINKS_PATH:
        return _links(source, params)
    if path == FEED_PATH:
        return _feed(source, params)
    if path == TABLE_PATH:
        return _table(source, params)
    if path == SEARCH_PATH:
        return _search(source, json.loads(body or b"{}"))
    return _deleted(source, params)


def _limit(raw: Any, source: DemoSource, default: int = 100) -> int:
    limit = min(int(raw if raw not in (None, "") else default), source.options.page_size_max)
    if limit < 1:
        raise ValueError("limit must be >= 1")
    return limit


def _links(source: DemoSource, params: dict[str, str]) -> Response:
    since = source.parse_us(params["since"]) if "since" in params else None
    limit = _limit(params.get("per_page"), source)
    after = source.decode_cursor(params["cursor"]) if params.get("cursor") else None
    _total, rows, more = source.listing(since=since, after=after, limit=limit)
    headers = {}
    if rows and more:
        query = {**params, "per_page": str(limit), "cursor": source.cursor_of(rows[-1])}
        headers["Link"] = f'<{source.url}{LINKS_PATH}?{urlencode(query)}>; rel="next"'
    return 200, rows, headers


def _feed(source: DemoSource, params: dict[str, str]) -> Response:
    raw = params.get("modified_since")
    since = int(raw) * _US if raw not in (None, "") else None
    limit = _limit(params.get("limit"), source)
    after = source.decode_cursor(params["cursor"]) if params.get("cursor") else None
    _total, rows, more = source.listing(since=since, after=after, limit=limit)
    items = [{**r, "modified": source.us_of(r) // _US} for r in rows]
    following = None
    if rows and more:
        query = {**params, "limit": str(limit), "cursor": source.cursor_of(rows[-1])}
        following = f"{source.url}{FEED_PATH}?{urlencode(query)}"
    return 200, {"items": items, "next": following}, {}


def _table(source: DemoSource, params: dict[str, str]) -> Response:
    match = _query(params.get("sysparm_query", ""))
    limit = _limit(params.get("sysparm_limit"), source, default=10_000)
    offset = int(params.get("sysparm_offset") or 0)
    if offset < 0:
        raise ValueError("sysparm_offset must be >= 0")
    total, rows, _more = source.listing(match=match, offset=offset, limit=limit)
    result = [
        {
            "sys_id": r["id"],
            "number": f"INC{r['number']:07d}",
            "short_description": r["short_description"],
            "priority": str(r["priority"]),
            "state": r["state"],
            "version": str(r["version"]),
            "sys_updated_on": _servicenow_time(source.us_of(r)),
        }
        for r in rows
    ]
    return 200, {"result": result}, {"X-Total-Count": str(total)}


def _query(text: str) -> Callable[[int, str], bool]:
    """A ServiceNow encoded query as a predicate over (updated_us, id)."""
    blocks = []
    for block in text.split("^NQ"):
        terms = []
        for term in [t for t in block.split("^") if t and not t.startswith("ORDERBY")]:
            found = _TERM.match(term)
            if not found:
                raise ValueError(f"unsupported sysparm_query term {term!r}")
            field, op, value = found.groups()
            terms.append(_condition(field, _OPS[op], value))
        blocks.append(terms)

    def match(us: int, record_id: str) -> bool:
        return any(all(term(us, record_id) for term in terms) for terms in blocks)

    return match


def _condition(field: str, op: Callable[[Any, Any], bool], value: str) -> Callable[..., bool]:
    if field == "sys_id":
        return lambda us, record_id: op(record_id, value)
    moment = datetime.strptime(value.strip(), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    bound = int(moment.timestamp()) * _US
    return lambda us, record_id: op(us - us % _US, bound)


def _servicenow_time(us: int) -> str:
    return datetime.fromtimestamp(us // _US, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _search(source: DemoSource, body: dict[str, Any]) -> Response:
    since, strict = None, False
    for group in body.get("filterGroups") or []:
        for item in group.get("filters") or []:
            if item.get("propertyName") != "hs_lastmodifieddate":
                raise ValueError(f"cannot filter on {item.get('propertyName')!r}")
            if item.get("operator") not in ("GTE", "GT"):
                raise ValueError(f"unsupported operator {item.get('operator')!r}")
            since, strict = int(item["value"]) * 1000, item["operator"] == "GT"
    limit = _limit(body.get("limit"), source)
    after = source.decode_cursor(str(body["after"])) if body.get("after") else None
    if strict and since is not None and after is None:
        after = (since + 999, "\uffff")  # GT on milliseconds: past the whole millisecond
    total, rows, more = source.listing(since=since, after=after, limit=limit)
    results = []
    for r in rows:
        properties = {k: v for k, v in r.items() if k not in ("id", "updated_at")}
        moment = datetime.fromtimestamp(source.us_of(r) / _US, UTC)
        properties["hs_lastmodifieddate"] = moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        results.append({"id": r["id"], "properties": properties, "archived": False})
    payload: dict[str, Any] = {"total": total, "results": results}
    if rows and more:
        payload["paging"] = {"next": {"after": source.cursor_of(rows[-1])}}
    return 200, payload, {}


def _deleted(source: DemoSource, params: dict[str, str]) -> Response:
    since = source.parse_us(params["updated_since"]) if "updated_since" in params else None
    limit = _limit(params.get("limit"), source)
    after = source.decode_cursor(params["cursor"]) if params.get("cursor") else None
    rows, more = source.tombstone_listing(since=since, after=after, limit=limit)
    cursor = None
    if rows and more:
        cursor = source.cursor_of({"id": rows[-1]["id"], "updated_at": rows[-1]["deleted_at"]})
    return 200, {"data": rows, "next_cursor": cursor}, {}
