"""How much a fetching process grows when a source answers with a huge page.

    python bench/huge_page.py                 # 200 MB, default limit
    python bench/huge_page.py --mb 200 --limit-mb 8 --gzip

A server on 127.0.0.1 streams a valid JSON list of ``--mb`` megabytes, made a chunk at a time
(with ``--gzip``: that many megabytes once inflated, about a thousandth on the wire). A child
process fetches it with ``RestSource`` and reports how far its peak RSS (``ru_maxrss``) rose
during the fetch, and the error; the server reports how many bytes it got to send before the
client hung up. Not part of the test suite (the tests assert the bound, this prints figures).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.hostile_server import Answer, Local, Seen, serve  # noqa: E402
from tests.test_hostile_records import CHILD, endless_page, gzip_bomb  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--limit-mb", type=int, default=0, help="0: the default limit")
    parser.add_argument("--gzip", action="store_true")
    args = parser.parse_args()
    size = args.mb * 1024 * 1024

    def respond(seen: Seen, local: Local) -> Answer:
        headers = {"Content-Type": "application/json"}
        body: Iterator[bytes] = endless_page(size)
        if args.gzip:
            headers["Content-Encoding"], body = "gzip", gzip_bomb(size)
        return 200, headers, body

    limits: dict[str, Any] = {}
    if args.limit_mb:
        limits["max_body_bytes"] = args.limit_mb * 1024 * 1024
    with serve("127.0.0.1", respond) as api:
        config = {"url": f"{api.url}/i", "pagination": {"type": "none"}, "limits": limits}
        done = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(config)],
            capture_output=True, text=True, timeout=600, cwd=ROOT,
        )  # fmt: skip
        sent = api.sent_bytes
    outcome = json.loads(done.stdout) if done.returncode == 0 else {"stderr": done.stderr[-500:]}
    print(json.dumps({"page_mb": args.mb, "gzip": args.gzip, "server_sent": sent, **outcome}))


if __name__ == "__main__":
    main()
