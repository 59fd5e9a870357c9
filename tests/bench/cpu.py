"""CPU time of the benchmark's processes from /proc/PID/stat, read before and after a run."""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")  # /proc/PID/stat counts CPU time in these


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime + stime, cutime + cstime) of `pid` in seconds: its own CPU time, all threads,
    and that of the children it has reaped (and of what they had reaped)."""
    # the fields after the command's ")": state is field 3, utime 14 ... cstime 17
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime) / TICK, (cutime + cstime) / TICK


class CpuMeter:
    """CPU per job of named processes between start() and stop(): /proc is read only at those
    two moments, so the meter costs the measured processes nothing in between."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before: dict[str, tuple[float, float]] = {}

    def start(self) -> None:
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self, jobs: int, children_of: str = "", children: str = "") -> dict[str, float]:
        """Microseconds of CPU per job since start(), by name; with `children_of`, the CPU of
        the children that process reaped as `children`."""
        out: dict[str, float] = {}
        for name, pid in self.pids.items():
            own, reaped = cpu_seconds(pid)
            out[name] = (own - self.before[name][0]) / jobs * 1e6
            if name == children_of:
                out[children] = (reaped - self.before[name][1]) / jobs * 1e6
        return out
