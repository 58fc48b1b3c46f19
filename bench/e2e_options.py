"""The options of bench/e2e.py (``python bench/e2e.py --help``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        value = kind(raw)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {raw}")
        return value

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/e2e.py",
        description="ihub end-to-end throughput on Postgres + Redis, next to its ceilings",
    )
    p.add_argument("--records", type=_positive(int), default=10000)
    p.add_argument("--mode", choices=["per-record", "batched", "both"], default="both")
    p.add_argument("--workers", type=_positive(int), default=2, help="worker processes")
    p.add_argument("--concurrency", type=_positive(int), default=2, help="pool size per worker")
    p.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    p.add_argument("--batch-size", type=_positive(int), default=500, help="rows per batch task")
    p.add_argument(
        "--pg",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a Postgres URL allowed to CREATE/DROP DATABASE (the bench gets its own database)",
    )
    p.add_argument(
        "--redis",
        default="redis://127.0.0.1:6379/14",
        help="broker URL; this Redis database is FLUSHED at start and at the end",
    )
    p.add_argument("--page-limit", type=_positive(int), default=500, help="records per page")
    p.add_argument("--timeout", type=_positive(float), default=1800.0, help="seconds, whole run")
    p.add_argument("--no-dlt", dest="dlt", action="store_false", help="skip dlt even if installed")
    p.add_argument(
        "--ceiling-records",
        type=_positive(int),
        help="no-op tasks for the ceiling (a rate; default --records): a 1M batched run "
        "need not spend half an hour on it",
    )
    p.add_argument(
        "--versions",
        type=_positive(int),
        default=1,
        help="give every record this many staged versions, then time the 1 %% delta again",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir with worker logs")
    return p.parse_args(argv)
