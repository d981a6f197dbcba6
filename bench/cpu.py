"""CPU time of processes (Linux `/proc`): shows whether the server or the load was the limit."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["CpuMeter", "cpu_model", "process_cpu_seconds"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # fields after the command name


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (redis-server under the `stack` server)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[1] == str(pid):  # field 4: the parent's pid
                found.append(int(entry.name))
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
    """CPU used by processes and their children between two marks, in cores."""

    def __init__(self, pids: Iterable[int]) -> None:
        # Children are looked up once, here: scanning /proc takes milliseconds.
        self._pids = tuple(p for pid in pids for p in (pid, *_children(pid)))
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


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo ("unknown" elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
