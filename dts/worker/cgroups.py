"""Cgroups of the worker's jobs: each running attempt in a cgroup v2 of its own, so that no
process of a job outlives it (not one that left its process group and session).

The worker makes a tree under its own cgroup, `dts-worker-PID`, and moves itself (so its guard
too) into `dts-worker-PID/supervisor`. Jobs run in `supervisor/job-N`: each thread of the
worker that starts jobs lives in a job cgroup of its own, and what it starts is born there (a
new process starts in the cgroup of the thread that forks it), one attempt at a time, the
cgroup found empty before the next. So a job's cgroup holds everything the job ever forked,
from its first instant, and no process is ever moved from cgroup to cgroup: moving a process
takes a lock that every fork and exit on the machine waits for (after a pause, for a grace
period of RCU too), which cost the worker over a tenth of its throughput when every job was
moved into its cgroup after its spawn.

Only a threaded cgroup can take a single thread of a process, hence threaded job cgroups, for
which the kernel refuses `cgroup.kill`: an attempt is ended with SIGKILL to every process of
the job in its cgroup, repeated until none is left (a process with a SIGKILL pending can fork
no more, so this ends), never to a thread of the worker. The tree, a domain cgroup, is ended
with `cgroup.kill`: by the worker at a clean exit, by its guard if the worker dies.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
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
    (the threads that start jobs live in the jobs' cgroups)."""
    for tid in _threads(cgroup):
        if not _ours(tid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(tid, sig)


def _populated(cgroup: str) -> bool:
    try:
        return "populated 1" in _read(f"{cgroup}/cgroup.events")
    except OSError:
        return False


class Slot:
    """A job cgroup, the home of one thread of the worker: the jobs that thread starts are born
    here, one attempt at a time (and it is found empty before the next)."""

    def __init__(self, path: str, tid: int) -> None:
        self.path = path
        self._threads = os.open(f"{path}/cgroup.threads", os.O_RDONLY | os.O_CLOEXEC)
        self._alone = b"%d\n" % tid  # cgroup.threads with nothing in it but its thread
        # populated() last found nothing of a job here and no job was started since: that is
        # still so (an empty cgroup has no process that could fork into it)
        self.seen_empty = True

    def populated(self) -> bool:
        """Whether any process of a job (not a zombie) is in the cgroup. Threads of the worker
        do not count: the one that lives here, and any it started (a thread starts in the
        cgroup of the thread that creates it: gRPC, for one, restarts its threads after a
        fork(), in the thread that forked)."""
        listed = os.pread(self._threads, 4096, 0)
        if listed != self._alone:  # the usual case costs one read
            if len(listed) == 4096:  # more than a page of threads: read them all
                listed = _read(f"{self.path}/cgroup.threads").encode()
            self.seen_empty = all(_ours(int(tid)) for tid in listed.split())
            return not self.seen_empty
        self.seen_empty = True
        return False

    def signal(self, sig: int) -> None:
        """Send `sig` to every process of a job in the cgroup, once (one that forks meanwhile
        may have a child that missed it: `kill` repeats)."""
        _signal_all(self.path, sig)

    def kill(self, timeout: float) -> bool:
        """SIGKILL every job process in the cgroup until none is left; whether that happened
        in time."""
        deadline = time.monotonic() + timeout
        while self.populated():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.signal(signal.SIGKILL)
            time.sleep(min(left, 0.005))
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._threads)


class JobCgroups:
    """The worker's cgroup tree: a job cgroup for each thread of the worker that starts jobs.

    A thread moves itself into a job cgroup of its own the first time it asks for one and
    stays there, so starting a job moves nothing (moving costs even a thread some 15 us of
    CPU, each way). The thread that asks for its cgroup (`acquire`) is the one that gives it
    back (`release`).
    """

    def __init__(self, base: str, tree: str) -> None:
        self.base = base  # the cgroup the worker came from (it goes back there at close)
        self.tree = tree
        self.supervisor = f"{tree}/{SUPERVISOR}"
        self._home = threading.local()  # .slot: the calling thread's job cgroup
        self._lock = threading.Lock()
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
            supervisor = f"{tree}/{SUPERVISOR}"
            os.mkdir(supervisor)
            _write(f"{supervisor}/cgroup.procs", str(pid))
            # a threaded cgroup, and a thread moving itself in and out: all a job cgroup needs
            trial = _threaded(f"{supervisor}/{JOB_PREFIX}0")
            _write(f"{trial}/cgroup.threads", "0")
            _write(f"{supervisor}/cgroup.threads", "0")
            os.rmdir(trial)
        except (OSError, Unavailable) as e:
            with contextlib.suppress(OSError):
                _write(f"{base}/cgroup.procs", str(pid))
            remove_tree(tree)
            if isinstance(e, OSError):
                raise Unavailable(f"cannot use cgroup {tree}: {e.strerror}") from None
            raise
        return cls(base, tree)

    def acquire(self) -> Slot:
        """The calling thread's job cgroup, where it is, empty; OSError if none can be made."""
        slot: Slot | None = getattr(self._home, "slot", None)
        if slot is not None:
            return slot
        if self._closed:
            raise OSError(errno.ESHUTDOWN, "the worker is stopping", self.tree)
        path = _threaded(f"{self.supervisor}/{JOB_PREFIX}{next(self._numbers)}")
        try:
            _write(f"{path}/cgroup.threads", "0")  # "0": the writing thread itself
            slot = Slot(path, threading.get_native_id())
        except OSError:
            with contextlib.suppress(OSError):
                os.rmdir(path)
            raise
        with self._lock:
            self._slots.append(slot)
        self._home.slot = slot
        return slot

    def release(self, slot: Slot) -> None:
        """Take back the calling thread's job cgroup after an attempt: killed if anything of
        the job is left; if that will not end, the thread moves to another next time."""
        if self._closed:
            return
        try:
            if slot.seen_empty or not slot.populated() or slot.kill(EMPTY_WAIT):
                return
            log.error("cgroup %s did not empty when killed; jobs use another", slot.path)
        except OSError as e:
            log.error("cgroup %s: %s; jobs use another", slot.path, e.strerror)
        self._home.slot = None

    def start(self, slot: Slot, spawn: Callable[A, T], *args: A.args, **kwargs: A.kwargs) -> T:
        """Run `spawn` (in the thread whose cgroup `slot` is): what it starts is born there."""
        slot.seen_empty = False
        return spawn(*args, **kwargs)

    def close(self) -> None:
        """Go back to the cgroup this process came from (every thread), kill whatever is left
        in the tree (its guard too: the worker is ending) and remove it."""
        with self._lock:
            self._closed = True
            slots = list(self._slots)
        try:
            _write(f"{self.base}/cgroup.procs", str(os.getpid()))
        except OSError as e:  # still inside: end the jobs only
            log.warning("cannot leave cgroup %s: %s", self.supervisor, e.strerror)
            for slot in slots:
                slot.kill(EMPTY_WAIT)
            return
        end_tree(self.tree)
        for slot in slots:
            slot.close()


def _threaded(path: str) -> str:
    """Make a threaded cgroup at `path`."""
    os.mkdir(path)
    try:
        _write(f"{path}/cgroup.type", "threaded")
    except OSError:
        with contextlib.suppress(OSError):
            os.rmdir(path)
        raise
    return path


def _ours(tid: int) -> bool:
    """Whether `tid` is a thread of this process."""
    return os.path.exists(f"/proc/self/task/{tid}")


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
