"""Cgroups of the worker's jobs: each running attempt in a cgroup v2 of its own, so that no
process of a job outlives it (not one that left its process group and session).

The worker makes a tree under its own cgroup, `dts-worker-PID`, and moves itself (so its guard
too) into `dts-worker-PID/supervisor`. Jobs run in `supervisor/job-N`, threaded cgroups that
each hold at most one attempt at a time (emptied and checked empty before the next), so
attempts get cgroups of their own without a mkdir and an rmdir per job.

A job is born in its cgroup, not moved there afterwards: the thread that starts it moves
itself into the job's cgroup, starts it (a new process starts in the cgroup of the thread that
forks it) and moves back. So nothing the job forks can be left behind, and no process is ever
migrated: a process migration takes a lock every fork and exit on the machine waits for (and,
when migrations are rare, a grace period of RCU), which measurably slowed every job; a thread
moving itself does not. Moving one thread alone is only allowed within a threaded subtree,
hence threaded job cgroups, where the kernel refuses `cgroup.kill`: an attempt is ended with
SIGKILL to every process in its cgroup, repeated until the cgroup is empty (a process that has
a SIGKILL pending can fork no more, so this ends). The tree as a whole, a domain cgroup, is
ended with `cgroup.kill` (by the worker at exit, by its guard if it dies).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

log = logging.getLogger("dts.cgroups")

TREE_PREFIX = "dts-worker-"
SUPERVISOR = "supervisor"
JOB_PREFIX = "job-"
EMPTY_WAIT = 5.0  # seconds a killed cgroup may take to empty

T = TypeVar("T")
A = ParamSpec("A")


class Unavailable(Exception):
    """Raised when jobs cannot get cgroups of their own here; the message says why."""


def hierarchy(mountinfo: str, own: str) -> str | None:
    """The directory of our own cgroup in the cgroup v2 hierarchy, from the text of
    /proc/self/mountinfo and /proc/self/cgroup; None if there is no v2 hierarchy."""
    path = next((line[3:] for line in own.splitlines() if line.startswith("0::")), None)
    if path is None or path.endswith(" (deleted)"):
        return None
    for line in mountinfo.splitlines():
        fields, _, rest = line.partition(" - ")
        if not rest.startswith("cgroup2 "):
            continue
        parts = fields.split()
        root, mount = _unescape(parts[3]), _unescape(parts[4])
        if path == root or path.startswith(root.rstrip("/") + "/"):
            return os.path.normpath(mount + "/" + path[len(root.rstrip("/")) :])
    return None


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def _threads(cgroup: str) -> list[int]:
    """The threads in a cgroup (in a threaded cgroup only threads can be listed); signalling
    one signals its whole process."""
    try:
        return [int(t) for t in _read(f"{cgroup}/cgroup.threads").split()]
    except OSError:
        return []


def _signal_all(cgroup: str, sig: int) -> None:
    """Send `sig` to every process in `cgroup`, never to one of this process's own threads
    (one that is starting a job is in the job's cgroup for that while)."""
    for tid in _threads(cgroup):
        if not os.path.exists(f"/proc/self/task/{tid}"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(tid, sig)


def _populated(cgroup: str) -> bool:
    try:
        return "populated 1" in _read(f"{cgroup}/cgroup.events")
    except OSError:
        return False


class Slot:
    """A job cgroup that holds one attempt at a time (descriptors kept open: used per job)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._enter = os.open(f"{path}/cgroup.threads", os.O_WRONLY | os.O_CLOEXEC)
        self._events = os.open(f"{path}/cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
        # populated() last found it empty and no job was started in it since: it is still
        # empty (an empty cgroup has no process that could fork into it)
        self.seen_empty = True

    def populated(self) -> bool:
        """Whether any process (not a zombie) is in the cgroup."""
        self.seen_empty = b"populated 0" in os.pread(self._events, 64, 0)
        return not self.seen_empty

    def signal(self, sig: int) -> None:
        """Send `sig` to every process in the cgroup, once (one that forks meanwhile may have
        a child that missed it: `kill` repeats)."""
        _signal_all(self.path, sig)

    def kill(self, timeout: float) -> bool:
        """SIGKILL everything in the cgroup until it is empty; whether that happened in time."""
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self._events, select.POLLPRI)  # woken when cgroup.events changes
        while self.populated():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.signal(signal.SIGKILL)
            poller.poll(min(left, 0.05) * 1000)
        return True

    def close(self) -> None:
        for fd in (self._enter, self._events):
            with contextlib.suppress(OSError):
                os.close(fd)


class JobCgroups:
    """The worker's cgroup tree and its pool of job cgroups. Thread-safe."""

    def __init__(self, base: str, tree: str) -> None:
        self.base = base  # the cgroup the worker came from (it goes back there at close)
        self.tree = tree
        self.supervisor = f"{tree}/{SUPERVISOR}"
        self._leave = os.open(f"{self.supervisor}/cgroup.threads", os.O_WRONLY | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._free: list[Slot] = []
        self._slots: list[Slot] = []
        self._numbers = itertools.count(1)
        self._closed = False

    @classmethod
    def create(cls) -> JobCgroups:
        """Make the tree under our own cgroup and move this process into its supervisor
        cgroup; raises Unavailable (with nothing left behind) where that cannot be done."""
        try:
            base = hierarchy(_read("/proc/self/mountinfo"), _read("/proc/self/cgroup"))
        except OSError as e:
            raise Unavailable(f"cannot read /proc: {e.strerror}") from None
        if base is None or not os.path.isdir(base):
            raise Unavailable("no cgroup v2 hierarchy is mounted")
        pid = os.getpid()
        tree = f"{base}/{TREE_PREFIX}{pid}"
        try:
            os.mkdir(tree)
        except OSError as e:
            raise Unavailable(f"cannot create cgroup {tree}: {e.strerror}") from None
        try:
            if not os.path.exists(f"{tree}/cgroup.kill"):
                raise Unavailable("the kernel has no cgroup.kill (it needs Linux 5.14 or later)")
            os.mkdir(f"{tree}/{SUPERVISOR}")
            _write(f"{tree}/{SUPERVISOR}/cgroup.procs", str(pid))
            made = cls(base, tree)
            slot = made.acquire()  # the first job cgroup, tried: threaded cgroups work here
            made.start(slot, int)
            made.release(slot)
            return made
        except (OSError, Unavailable) as e:
            with contextlib.suppress(OSError):
                _write(f"{base}/cgroup.procs", str(pid))
            remove_tree(tree)
            if isinstance(e, OSError):
                raise Unavailable(f"cannot use cgroup {tree}: {e.strerror}") from None
            raise

    def acquire(self) -> Slot:
        """An empty job cgroup for one attempt; OSError if none can be made."""
        with self._lock:
            if self._closed:
                raise OSError(errno.ESHUTDOWN, "the worker is stopping", self.tree)
            if self._free:
                return self._free.pop()
        path = f"{self.supervisor}/{JOB_PREFIX}{next(self._numbers)}"
        os.mkdir(path)
        try:
            _write(f"{path}/cgroup.type", "threaded")
            slot = Slot(path)
        except OSError:
            with contextlib.suppress(OSError):
                os.rmdir(path)
            raise
        with self._lock:
            self._slots.append(slot)
        return slot

    def release(self, slot: Slot) -> None:
        """Take back a job cgroup whose attempt is over: reused if empty, else killed; one
        that will not empty is never used again."""
        with self._lock:
            if self._closed:
                return
        try:
            if not slot.seen_empty and slot.populated() and not slot.kill(EMPTY_WAIT):
                log.error("cgroup %s did not empty when killed; jobs use another", slot.path)
                return
        except OSError as e:
            log.error("cgroup %s: %s; jobs use another", slot.path, e.strerror)
            return
        with self._lock:
            self._free.append(slot)

    def start(self, slot: Slot, spawn: Callable[A, T], *args: A.args, **kwargs: A.kwargs) -> T:
        """Run `spawn` with this thread in `slot`, so that what it starts is born there."""
        try:
            os.write(slot._enter, b"0")  # "0": the writing thread itself
        except OSError as e:
            raise OSError(e.errno, f"cannot enter cgroup {slot.path}: {e.strerror}") from None
        slot.seen_empty = False
        try:
            return spawn(*args, **kwargs)
        finally:
            os.write(self._leave, b"0")

    def reclaim(self, slot: Slot) -> None:
        """Bring back threads of this process that were started in `slot` while a thread was
        there to start a job: after a fork() (not after posix_spawn) handlers run in the parent
        that may start threads (gRPC's do), and a new thread starts where its creator is."""
        for tid in _threads(slot.path):
            if os.path.exists(f"/proc/self/task/{tid}"):
                with contextlib.suppress(OSError):
                    _write(f"{self.supervisor}/cgroup.threads", str(tid))

    def close(self) -> None:
        """Go back to the cgroup this process came from, kill whatever is left in the tree
        (its guard too: the worker is ending) and remove it. Job cgroups still in use keep
        their descriptors: their threads may still read them, and the process is ending."""
        with self._lock:
            self._closed = True
            free, slots = list(self._free), list(self._slots)
        for slot in free:
            slot.close()
        with contextlib.suppress(OSError):
            os.close(self._leave)
        try:
            _write(f"{self.base}/cgroup.procs", str(os.getpid()))
        except OSError as e:  # still inside: end the jobs' cgroups only
            log.warning("cannot leave cgroup %s: %s", self.supervisor, e.strerror)
            for slot in slots:
                slot.kill(EMPTY_WAIT)
            return
        end_tree(self.tree)


def end_tree(tree: str) -> None:
    """Kill everything in a tree (cgroup.kill), wait (bounded) until it is empty, remove it."""
    with contextlib.suppress(OSError):
        _write(f"{tree}/cgroup.kill", "1")
    deadline = time.monotonic() + EMPTY_WAIT
    while _populated(tree) and time.monotonic() < deadline:
        time.sleep(0.01)
    remove_tree(tree)


def remove_tree(tree: str) -> None:
    """Remove a worker's tree, deepest first, as far as it is empty (errors are ignored: a
    cgroup with processes in it stays)."""
    for path in reversed(_cgroups_in(tree)):
        with contextlib.suppress(OSError):
            os.rmdir(path)


def _cgroups_in(tree: str) -> list[str]:
    """`tree` and every cgroup below it, parents first."""
    return [path for path, _, _ in os.walk(tree)]


class WorkerTree:
    """A worker's tree as its guard sees it once the worker has died: the guard moves out to
    `home`, ends the jobs (TERM, then KILL: `cgroup.kill` of the whole tree) and removes the
    tree. (After a clean exit there is nothing left: the worker ended the tree, this guard
    with it.)"""

    def __init__(self, tree: str, home: str) -> None:
        self.tree = tree
        try:
            _write(f"{home}/cgroup.procs", str(os.getpid()))
            self._outside = True
        except OSError:
            self._outside = False

    def jobs(self) -> list[str]:
        supervisor = f"{self.tree}/{SUPERVISOR}"
        return [c for c in _cgroups_in(supervisor) if c != supervisor]

    def populated(self) -> bool:
        return any(_populated(c) for c in self.jobs())

    def signal(self, sig: int) -> None:
        for cgroup in self.jobs():
            _signal_all(cgroup, sig)

    def kill(self) -> None:
        if self._outside:
            with contextlib.suppress(OSError):
                _write(f"{self.tree}/cgroup.kill", "1")
        else:  # the tree holds this guard: the jobs' cgroups only
            self.signal(signal.SIGKILL)

    def remove(self) -> None:
        """Wait (bounded) until the jobs are gone, killing any late fork; remove the tree."""
        deadline = time.monotonic() + EMPTY_WAIT
        while self.populated() and time.monotonic() < deadline:
            self.signal(signal.SIGKILL)
            time.sleep(0.01)
        remove_tree(self.tree)
