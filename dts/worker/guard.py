"""The job guard: a tiny sidecar process that kills a worker's jobs when the worker dies.

PR_SET_PDEATHSIG is not delivered everywhere, so the worker starts this guard in its own
session and keeps the process groups of its running jobs in a table in shared memory (a
memfd both map). Listing a job is a store to memory: no system call, no wake-up. Where jobs
run in cgroups (dts.worker.cgroups), the guard is also told the worker's cgroup tree, in which it
lives itself. The guard only waits for EOF on a pipe from the worker; at EOF (the worker
exited or was killed outright, SIGKILL included) it kills every group still in the table and
everything in the jobs' cgroups: TERM, then KILL after a grace (`cgroup.kill` of the whole
tree, once the guard has moved out of it), and removes the tree. (A worker that exits cleanly
ends its tree itself, and the guard with it.) Only the worker reports results, so an orphaned
job could never report one anyway; the guard makes sure it does not keep running either.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import signal
import struct
import subprocess
import sys
import threading
import time

from dts.worker.cgroups import JobCgroups, WorkerTree

log = logging.getLogger("dts.guard")

ENTRY = struct.Struct("=q")  # one process group id; 0 is a free entry


class Guard:
    """The worker's handle on its guard process and on the table of groups it watches."""

    def __init__(self, grace: float, capacity: int = 1024) -> None:
        self.grace = grace
        self.capacity = capacity
        self._proc: subprocess.Popen[bytes] | None = None
        self._table: mmap.mmap | None = None
        self._lock = threading.Lock()
        self._where: dict[int, int] = {}  # pgid -> entry index
        self._free = list(range(capacity - 1, -1, -1))
        self._warned = False
        self._checked = float("-inf")  # when _guard_alive last asked
        self._alive = True

    def start(self, tree: JobCgroups | None = None) -> None:
        """Start the guard; with `tree`, it ends the jobs in that worker's cgroups too."""
        fd = os.memfd_create("dts-guard", os.MFD_CLOEXEC)
        where = [tree.tree, tree.base] if tree is not None else []
        try:
            os.ftruncate(fd, self.capacity * ENTRY.size)
            self._table = mmap.mmap(fd, self.capacity * ENTRY.size)
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "dts.worker.guard", str(self.grace), str(fd), *where],
                stdin=subprocess.PIPE,
                pass_fds=(fd,),
                start_new_session=True,  # a signal to the worker's group must not reach the guard
            )
        finally:
            os.close(fd)

    def add(self, pgid: int) -> None:
        with self._lock:
            if self._table is None or pgid in self._where:
                return
            if not self._free or not self._guard_alive():
                self._warn("job guard exited" if self._free else "job guard table full")
                return
            index = self._free.pop()
            ENTRY.pack_into(self._table, index * ENTRY.size, pgid)
            self._where[pgid] = index

    def remove(self, pgid: int) -> None:
        with self._lock:
            index = self._where.pop(pgid, None)
            if index is None or self._table is None:
                return
            ENTRY.pack_into(self._table, index * ENTRY.size, 0)
            self._free.append(index)

    def _guard_alive(self) -> bool:
        """Whether the guard process still runs (asked of the kernel at most once a second)."""
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            self._alive = self._proc is None or self._proc.poll() is None
        return self._alive

    def _warn(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            log.error("%s: jobs may outlive this worker if it is killed", why)

    def close(self) -> None:
        """Tell the guard we are done (it kills whatever is still listed) and reap it."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if proc.stdin:
                proc.stdin.close()
        try:
            proc.wait(self.grace + 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with self._lock:
            if self._table is not None:
                self._table.close()
                self._table = None


def listed(fd: int) -> set[int]:
    """The process groups in the table behind `fd`."""
    size = os.fstat(fd).st_size
    data = os.pread(fd, size, 0)
    return {pgid for (pgid,) in ENTRY.iter_unpack(data) if pgid > 0}


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _kill_all(pgids: set[int], tree: WorkerTree | None, grace: float) -> None:
    """TERM the groups and the tree's jobs, KILL them after `grace` (at once when all ended)."""
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    if tree is not None:
        tree.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and (
        any(_alive(p) for p in pgids) or (tree is not None and tree.populated())
    ):
        time.sleep(0.05)
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    if tree is not None:
        tree.kill()


def main() -> int:
    grace = float(sys.argv[1])
    table = int(sys.argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only EOF on stdin ends the guard
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while os.read(0, 4096):  # the worker writes nothing: this returns at its exit
        pass
    pgids = listed(table)
    tree = WorkerTree(sys.argv[3], sys.argv[4]) if sys.argv[4:] else None
    if pgids or (tree is not None and tree.populated()):
        _kill_all(pgids, tree, grace)
    if tree is not None:
        tree.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
