"""What a phase costs the whole machine in CPU, next to its rate (Linux ``/proc/stat``).

Every process counts: worker main processes and pool children, Postgres, Redis, the demo
source and this one. On C cores a phase that spends U seconds of CPU a record cannot run
faster than C / U records a second, however its work is spread. So the CPU a goal's rate
leaves a record (``budget_us``) set next to the least any design spends a record (a floor,
such as the write ceiling or the staged floor) says whether that goal fits on this machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

TICKS = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float | None:
    """CPU seconds every core has spent busy since boot (user, nice, system, irq, softirq;
    not idle, I/O wait or steal); None where ``/proc/stat`` cannot be read."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    return (user + nice + system + irq + softirq) / TICKS


def budget_us(rate: float | None) -> float | None:
    """The most CPU a record may cost, every core busy, for ``rate`` records a second."""
    return round((os.cpu_count() or 1) * 1e6 / rate, 1) if rate else None


class CpuMeter:
    """The machine's busy CPU a record of each phase measured, in microseconds."""

    def __init__(self) -> None:
        self.us: dict[str, float | None] = {}

    @contextmanager
    def phase(self, name: str, records: int) -> Iterator[None]:
        start = busy_seconds()
        yield
        end = busy_seconds()
        spent = None if start is None or end is None else (end - start) * 1e6 / max(records, 1)
        self.us[name] = None if spent is None else round(spent, 1)
