"""Pieces of bench/e2e.py: a deadline, worker processes in their own groups, their memory."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from machine import budget_us

REPO = Path(__file__).resolve().parent.parent


class BenchError(Exception):
    """The benchmark could not produce a trustworthy figure."""


def say(message: str) -> None:
    print(message, flush=True)


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def check(self, what: str) -> None:
        if time.monotonic() > self.end:
            raise BenchError(f"--timeout {self.seconds:.0f}s exceeded while {what}")


class Workers:
    """``count`` Celery worker processes, each in its own process group (so it stops whole)."""

    def __init__(
        self,
        app_name: str,
        prefix: str,
        count: int,
        concurrency: int,
        env: dict[str, str],
        log_dir: Path,
        pool: str = "prefork",
    ) -> None:
        self.app_name, self.prefix = app_name, prefix
        self.count, self.concurrency = count, concurrency
        self.env, self.log_dir, self.pool = env, log_dir, pool
        self.names = [f"{prefix}{n}" for n in range(1, count + 1)]
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for name in self.names:
            command = [
                sys.executable, "-m", "celery", "-A", self.app_name, "worker",
                "--concurrency", str(self.concurrency), "--loglevel", "WARNING",
                "--pool", self.pool,
                "--hostname", f"{name}@%h",
            ]  # fmt: skip
            with open(self.log_dir / f"{name}.log", "wb") as log:
                self.processes.append(
                    subprocess.Popen(
                        command,
                        env=self.env,
                        cwd=REPO,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def wait_ready(self, app: Any, deadline: Deadline, limit: float = 90.0) -> float:
        """Until every worker answers a control ping; the seconds that took."""
        started = time.monotonic()
        expected = set(self.names)
        while True:
            self._check_alive()
            replies = app.control.ping(timeout=1.0) or []
            answered = {host.split("@")[0] for reply in replies for host in reply}
            if expected <= answered:
                return time.monotonic() - started
            deadline.check(f"waiting for {self.prefix} workers to answer ping")
            if time.monotonic() - started > limit:
                missing = ", ".join(sorted(expected - answered))
                raise BenchError(f"workers did not answer ping in {limit:.0f}s: {missing}")

    def _check_alive(self) -> None:
        for name, process in zip(self.names, self.processes, strict=True):
            if process.poll() is not None:
                raise BenchError(
                    f"worker {name} exited with {process.returncode}:\n{self.log_tail(name)}"
                )

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.log_dir / f"{name}.log"
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"  (no log at {path})"
        return "\n".join("  | " + line for line in tail)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM each process group (warm shutdown), SIGKILL whatever is left after timeout."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        end = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"  worker pid {process.pid} ignored SIGTERM for {timeout:.0f}s; killing")
            # pool children left behind by a dead or stuck main process go too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        self.processes = []


def rss_mb(pids: list[int]) -> float:
    """The largest resident set among the processes of these process groups (a worker and
    its pool children), in MB; Linux /proc only (0.0 elsewhere)."""
    groups, largest = set(pids), 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) in groups:  # pgrp
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        largest = max(largest, int(line.split()[1]))
    return round(largest / 1024, 1)


def safe_url(url: str) -> str:
    """``url`` without its password, for what the benchmark prints."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.rsplit("@", 1)[-1]


def figures(
    n: int,
    ceilings: tuple[float, float | None],
    loads: dict[str, dict[str, Any]],
    upserts: tuple[float, Any],
    dlt: float | None,
    last: str,
    cpu_us: dict[str, float | None],
) -> dict[str, Any]:
    """The result: the keys bench/README.md documents."""

    def rate(mode: str, key: str = "e2e_s") -> float | None:
        load = loads.get(mode)
        return round(n / load["full"][key], 1) if load else None

    per_record, batched = rate("per-record"), rate("batched")
    ceiling, write = ceilings
    upsert, staged = upserts
    tail = loads[last]
    delta = tail["delta"]["e2e_s"] / tail["full"]["e2e_s"]
    history = tail.get("delta_after_versions")
    return {
        "records": n,
        "ceiling_per_s": round(ceiling, 1),
        "per_record_per_s": per_record,
        "ratio_per_record": round(per_record / ceiling, 3) if per_record else None,
        "write_ceiling_per_s": None if write is None else round(write, 1),
        "ratio_write_ceiling": None if write is None else round(write / ceiling, 3),
        "ratio_per_record_write": round(per_record / write, 3) if per_record and write else None,
        "batched_per_s": batched,
        "batch_upsert_per_s": round(upsert, 1),
        "ratio_batched": round(batched / upsert, 3) if batched else None,
        **_staged(staged, upsert, batched),
        "dlt_per_s": None if dlt is None else round(dlt, 1),
        "ratio_batched_dlt": round(batched / dlt, 3) if batched and dlt else None,
        "fetch_per_s": rate(last, "fetch_s"),
        "fetch_per_record_mode_per_s": rate("per-record", "fetch_s"),
        **_machine_cpu(cpu_us, ceiling, upsert, dlt),
        "delta_1pct_ratio": round(delta, 4),
        "delta_1pct_ratio_after_versions": (
            round(history["e2e_s"] / tail["full"]["e2e_s"], 4) if history else None
        ),
        "worker_rss_start_mb": tail["rss_start"],
        "worker_rss_end_mb": tail["rss_end"],
        "delta_mode": last,
    }


def _staged(staged: Any, upsert: float, batched: float | None) -> dict[str, Any]:
    """The staged floor's keys: its rate, its CPU a record, and the rate its CPU allows on
    every core of this machine, each next to the ``execute_values`` upsert."""
    if staged is None:
        keys = ("per_s", "cpu_us", "bound_per_s")
        return {f"staged_floor_{k}": None for k in keys} | {
            "ratio_staged_floor": None, "ratio_staged_bound": None,
            "ratio_batched_staged_floor": None,
        }  # fmt: skip
    bound = (os.cpu_count() or 1) / staged.cpu_s
    return {
        "staged_floor_per_s": round(staged.per_s, 1),
        "staged_floor_cpu_us": round(staged.cpu_s * 1e6, 1),
        "staged_floor_bound_per_s": round(bound, 1),
        "ratio_staged_floor": round(staged.per_s / upsert, 3),
        "ratio_staged_bound": round(bound / upsert, 3),
        "ratio_batched_staged_floor": round(batched / staged.per_s, 3) if batched else None,
    }


CPU_ROWS = {
    "a": "ceiling", "a'": "write_ceiling", "b": "per_record", "c": "batched",
    "d": "batch_upsert", "d'": "staged_floor", "e": "dlt",
}  # fmt: skip
CPU_KEYS = tuple(CPU_ROWS.values())


def _machine_cpu(
    cpu_us: dict[str, float | None], ceiling: float, upsert: float, dlt: float | None
) -> dict[str, Any]:
    """The machine's CPU a record in each phase, and what each ratio goal leaves a record on
    this machine's cores: per-record at 0.85 of the no-op ceiling, batched at 0.5 of the
    ``execute_values`` upsert."""
    spent = {key: cpu_us.get(key) for key in CPU_KEYS}
    if dlt is None:
        spent["dlt"] = None
    budget = {"per_record": budget_us(0.85 * ceiling), "batched": budget_us(0.5 * upsert)}
    return {"machine_cpu_us": spent, "goal_cpu_budget_us": budget}


def summary(r: dict[str, Any], args: argparse.Namespace) -> str:
    spent, budget = r["machine_cpu_us"], r["goal_cpu_budget_us"]

    def cell(value: Any, unit: str = "/s") -> str:
        return "n/a" if value is None else f"{value:,.0f}{unit}" if unit else f"{value}"

    lines = [
        "",
        "== ihub end-to-end benchmark ==",
        f"records x workers x concurrency   {r['records']} x {args.workers} x "
        f"{args.concurrency} ({args.pool}), page {args.page_limit}, batch {args.batch_size}",
        f"(a) no-op Celery ceiling           {cell(r['ceiling_per_s'])}",
        f"(a') the same + one write a task   {cell(r['write_ceiling_per_s'])}   "
        f"ratio a'/a {cell(r['ratio_write_ceiling'], '')}",
        f"(b) ihub per-record, end to end    {cell(r['per_record_per_s'])}   "
        f"ratio b/a {cell(r['ratio_per_record'], '')}, b/a' "
        f"{cell(r['ratio_per_record_write'], '')}",
        f"(c) ihub batched, end to end       {cell(r['batched_per_s'])}",
        f"(d) psycopg2 execute_values upsert {cell(r['batch_upsert_per_s'])}   "
        f"ratio c/d {cell(r['ratio_batched'], '')}",
        f"(d') read, staged, then upserted   {cell(r['staged_floor_per_s'])}   "
        f"ratio d'/d {cell(r['ratio_staged_floor'], '')}, c/d' "
        f"{cell(r['ratio_batched_staged_floor'], '')}",
        f"  its CPU a record, and the rate   {cell(r['staged_floor_cpu_us'], ' us')}, "
        f"{cell(r['staged_floor_bound_per_s'])} on {os.cpu_count()} cores "
        f"(/d {cell(r['ratio_staged_bound'], '')})",
        f"(e) dlt rest_api merge             {cell(r['dlt_per_s'])}   "
        f"ratio c/e {cell(r['ratio_batched_dlt'], '')}",
        f"fetch stage ({r['delta_mode']})         {cell(r['fetch_per_s'])}   "
        f"(per-record mode: {cell(r['fetch_per_record_mode_per_s'])})",
        f"1 % delta / full load              {r['delta_1pct_ratio']}",
        f"  the same, after {args.versions} versions    "
        f"{cell(r['delta_1pct_ratio_after_versions'], '')}",
        f"worker RSS start -> end            {r['worker_rss_start_mb']} -> "
        f"{r['worker_rss_end_mb']} MB",
        "machine CPU a record (every process, us): "
        + ", ".join(f"{k} {cell(spent[v], '')}" for k, v in CPU_ROWS.items()),
        f"  the most a goal leaves on {os.cpu_count()} cores: b = 0.85 a "
        f"{cell(budget['per_record'], ' us')}, c = 0.5 d {cell(budget['batched'], ' us')}",
    ]
    return "\n".join(lines)
