"""The README's first command: the demo on the embedded default, with no services at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_once_exits_zero_on_the_embedded_default(tmp_path: Path) -> None:
    """`ihub demo --once` syncs every record into SQLite through a real worker and exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IHUB_")}
    env["IHUB_HOME"] = str(tmp_path / "home")
    command = [
        sys.executable,
        "-m",
        "ihub",
        "demo",
        "--once",
        "--records",
        "150",
        "--web-port",
        "0",
    ]
    result = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "incidents: fetched=150 done=150 retrying=0 dead=0 pending=0" in result.stdout
    assert "incidents_itsm: fetched=150 done=150 retrying=0 dead=0 pending=0" in result.stdout
    assert "status page: http://127.0.0.1:" in result.stdout
    assert "demo-secret" not in result.stdout + result.stderr
    database = tmp_path / "home" / "demo" / "ihub.db"
    import sqlite3

    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT COUNT(*) FROM incidents").fetchone() == (150,)
