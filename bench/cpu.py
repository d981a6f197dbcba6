"""CPU time of processes (Linux `/proc`): shows whether the server or the load was the limit."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["CpuMeter", "MachineMeter", "cpu_model", "process_cpu_seconds"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # fields after the command name


def _descendants(pid: int) -> list[int]:
    """Children, grandchildren… of `pid` (core and redis-server under the `stack` edge)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:  # field 4 of stat, 2 after the name: the parent's pid
                parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def process_cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds used so far by `pids` (those still running)."""
    total = 0.0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
            total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


class CpuMeter:
    """CPU used by processes (and their descendants) between two marks, in cores."""

    def __init__(self, pids: Iterable[int], *, descendants: bool = True) -> None:
        # Descendants are looked up once, here: scanning /proc takes milliseconds.
        self._pids = tuple(
            p for pid in pids for p in (pid, *(_descendants(pid) if descendants else ()))
        )
        self._start: tuple[float, float] | None = None
        self._end: tuple[float, float] | None = None

    def _reading(self) -> tuple[float, float]:
        return time.perf_counter(), process_cpu_seconds(self._pids)

    def start(self) -> None:
        """Mark the start of the window."""
        self._start = self._reading()

    def stop(self) -> None:
        """Mark the end of the window."""
        self._end = self._reading()

    def cores(self) -> float | None:
        """Average cores used over the window; None without both marks or any process."""
        if self._start is None or self._end is None or not self._pids:
            return None
        wall = self._end[0] - self._start[0]
        return (self._end[1] - self._start[1]) / wall if wall > 0 else None


def _machine_ticks() -> tuple[int, int, int]:
    """(all, busy, stolen) ticks summed over CPUs, from /proc/stat; zeros elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0, 0, 0
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    fields += [0] * (8 - len(fields))
    # Busy means process time (user, nice, system): interrupt time is the loopback
    # traffic of the run itself, which no process's own counters include.
    return sum(fields), fields[0] + fields[1] + fields[2], fields[7]


class MachineMeter:
    """The whole machine between two marks: busy cores, and the share the hypervisor stole.

    Busy cores beyond what the measured processes used is someone else's work: a run
    next to other load (a test suite, a build) does not measure what it claims to.
    """

    def __init__(self) -> None:
        self._cpus = os.cpu_count() or 1  # /proc/stat's first line sums every CPU
        self._start = (0, 0, 0)
        self._end = (0, 0, 0)

    def start(self) -> None:
        """Mark the start of the window."""
        self._start = _machine_ticks()

    def stop(self) -> None:
        """Mark the end of the window."""
        self._end = _machine_ticks()

    def busy_cores(self) -> float | None:
        """Average number of busy CPUs over the window; None when unknown."""
        total = self._end[0] - self._start[0]
        if total <= 0:
            return None
        return (self._end[1] - self._start[1]) / total * self._cpus

    def steal_share(self) -> float | None:
        """Stolen ticks over all ticks in the window; None when unknown."""
        total = self._end[0] - self._start[0]
        return (self._end[2] - self._start[2]) / total if total > 0 else None


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo ("unknown" elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
