"""Where the CPU of a benchmark goes: per process group, second by second.

    python bench/cpu_split.py --out split.txt -- \
        python bench/e2e.py --records 10000 --mode per-record --no-dlt

Runs the command, reads every process's CPU time from /proc once a second (Linux only) and
prints, when the command ends, a timeline of CPU seconds per second for each group (worker
main processes, worker pool children, postgres, redis, the benchmark process, the demo source
it spawns, and the rest) and the totals. On a 2-core machine a rate is CPU-bound once
the groups add up to about 2.0: the timeline tells which group each phase pays for (see
bench/README.md, "Where the CPU goes").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
Snapshot = dict[int, tuple[str, float]]


def group_of(pid: int, parent: int, command: str, worker_mains: set[int]) -> str:
    """The group a process counts in; a worker's pool children apart from its main process."""
    if "postgres" in command:
        return "postgres"
    if "redis-server" in command:
        return "redis"
    if " worker " in command and "celery" in command:
        if parent in worker_mains:
            return "worker-child"
        worker_mains.add(pid)
        return "worker-main"
    if "bench/" in command:
        return "bench"
    if "multiprocessing.spawn" in command:  # bench/source_process.py: the demo source
        return "source"
    return "other"


def snapshot(worker_mains: set[int]) -> Snapshot:
    """CPU seconds (user + system) so far of every process, with its group."""
    taken: Snapshot = {}
    for entry in sorted(os.listdir("/proc"), key=lambda name: (len(name), name)):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, UnicodeDecodeError):
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        parent, cpu = int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS
        pid = int(entry)
        taken[pid] = (group_of(pid, parent, command, worker_mains), cpu)
    return taken


def spent(before: Snapshot, after: Snapshot) -> Counter[str]:
    """CPU seconds per group between two snapshots, each process in the group it had first (a
    process new in ``after`` counts whole; one that ended between the two is not seen)."""
    groups: Counter[str] = Counter()
    for pid, (group, cpu) in after.items():
        earlier = before.get(pid)
        if earlier is None:
            groups[group] += cpu
        elif cpu >= earlier[1]:  # not a reused pid
            groups[earlier[0]] += cpu - earlier[1]
    return groups


def _totals(groups: Counter[str]) -> str:
    return " ".join(f"{g}={s:.1f}" for g, s in sorted(groups.items()) if s >= 0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    parser.add_argument(
        "--window",
        action="append",
        default=[],
        metavar="FROM:TO",
        help="also total the seconds FROM to TO of the timeline (repeatable), e.g. a phase",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("name the command to run after --")
    worker_mains: set[int] = set()
    started = time.monotonic()
    previous = snapshot(worker_mains)
    lines: list[str] = []
    steps: list[tuple[float, Counter[str]]] = []
    with subprocess.Popen(command) as process:
        while process.poll() is None:
            time.sleep(args.every)
            current = snapshot(worker_mains)
            step = spent(previous, current)
            row = " ".join(f"{g}={s:.2f}" for g, s in sorted(step.items()) if s >= 0.01)
            at = time.monotonic() - started
            steps.append((at, step))
            lines.append(f"{at:7.1f}s  {row}")
            previous = {**previous, **current}  # a process missed once is not new later
    whole: Counter[str] = Counter()
    for _, step in steps:
        whole.update(step)
    lines.append("totals (CPU seconds): " + _totals(whole))
    for window in args.window:
        low, high = (float(part) for part in window.split(":", 1))
        inside: Counter[str] = Counter()
        for at, step in steps:
            if low < at <= high:
                inside.update(step)
        lines.append(f"{low:g}s to {high:g}s (CPU seconds): {_totals(inside)}")
    report = "\n".join(lines) + "\n"
    sys.stdout.write(report)
    if args.out:
        args.out.write_text(report)
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
