"""Cgroups of the worker's jobs: each running attempt in a cgroup v2 of its own, ended with
`cgroup.kill`, so no process of a job outlives it (not one that left its process group).

The worker makes a tree under its own cgroup: `dts-worker-PID/supervisor` holds the worker and
its guard, and `dts-worker-PID/slot-N` each hold at most one attempt at a time (emptied and
checked empty before the next), so running attempts get cgroups of their own without a mkdir
and an rmdir per job.

A job is born in the worker's cgroup (glibc's posix_spawn cannot start it in another) and
moved into its slot at once, but it may fork before the move. Spawns therefore happen under a
lock, and after each the supervisor cgroup is swept: anything in it but the worker and its
guard can only come from the job just spawned, and goes into the same slot. This relies on
the worker starting no other processes (it starts only jobs and the guard).
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
from collections.abc import Callable, Iterable
from typing import ParamSpec, Protocol, TypeVar

log = logging.getLogger("dts.cgroups")

TREE_PREFIX = "dts-worker-"
SUPERVISOR = "supervisor"
SLOT_PREFIX = "slot-"
SWEEP_ROUNDS = 100  # moves of a spawn's strays before they are killed instead
EMPTY_WAIT = 5.0  # seconds a killed cgroup may take to empty


class Unavailable(Exception):
    """Raised when jobs cannot get cgroups of their own here; the message says why."""


class HasPid(Protocol):
    @property
    def pid(self) -> int: ...


P = TypeVar("P", bound=HasPid)
A = ParamSpec("A")


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


def _pids(text: bytes | str) -> list[int]:
    return [int(p) for p in text.split()]


class Slot:
    """A cgroup that holds one attempt at a time (descriptors kept open: they are per job)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._procs = os.open(f"{path}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        self._events = os.open(f"{path}/cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
        # populated() last found it empty and nothing was added since: it is still empty (an
        # empty cgroup has no process that could fork into it)
        self.seen_empty = True

    def add(self, pid: int) -> None:
        """Move process `pid` (all its threads) here; ProcessLookupError if it is gone."""
        self.seen_empty = False
        os.write(self._procs, b"%d" % pid)

    def populated(self) -> bool:
        """Whether any process (not a zombie) is in the cgroup."""
        self.seen_empty = b"populated 0" in os.pread(self._events, 64, 0)
        return not self.seen_empty

    def pids(self) -> list[int]:
        try:
            return _pids(_read(f"{self.path}/cgroup.procs"))
        except OSError:
            return []

    def signal(self, sig: int) -> None:
        """Send `sig` to every process in the cgroup (one that forks meanwhile may miss it:
        `kill()` does not)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def kill(self) -> None:
        """SIGKILL every process in the cgroup and its descendants, new forks included."""
        with contextlib.suppress(OSError):  # gone already: nothing in it to kill
            _write(f"{self.path}/cgroup.kill", "1")

    def wait_empty(self, timeout: float) -> bool:
        """Wait until nothing is left in the cgroup; whether that happened in time."""
        return wait_empty(self._events, timeout)

    def close(self) -> None:
        for fd in (self._procs, self._events):
            with contextlib.suppress(OSError):
                os.close(fd)


def wait_empty(events: int, timeout: float) -> bool:
    """Wait on a cgroup.events descriptor until `populated 0`; whether it came in time. The
    kernel wakes poll() (POLLPRI) whenever the file changes."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(events, select.POLLPRI)
    while True:
        try:
            if b"populated 1" not in os.pread(events, 256, 0):
                return True
        except OSError:  # removed: empty
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        poller.poll(min(left, 0.1) * 1000)


class JobCgroups:
    """The worker's cgroup tree and its pool of slot cgroups. Thread-safe."""

    def __init__(self, base: str, tree: str, worker: int) -> None:
        self.base = base  # the cgroup the worker came from (it goes back there at close)
        self.tree = tree
        self.supervisor = f"{tree}/{SUPERVISOR}"
        self._exempt = {worker}  # what belongs in the supervisor cgroup: worker and guard
        self._spawn_lock = threading.Lock()
        self._lock = threading.Lock()
        self._free: list[Slot] = []
        self._slots: list[Slot] = []
        self._numbers = itertools.count(1)
        self._quiet = b""  # what the supervisor's cgroup.procs read when it held no stray
        self._closed = False
        self._sweep = os.open(f"{self.supervisor}/cgroup.procs", os.O_RDONLY | os.O_CLOEXEC)

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
            return cls(base, tree, pid)
        except (OSError, Unavailable) as e:
            with contextlib.suppress(OSError):
                _write(f"{base}/cgroup.procs", str(pid))
            remove_tree(tree)
            if isinstance(e, OSError):
                raise Unavailable(f"cannot use cgroup {tree}: {e.strerror}") from None
            raise

    def exempt(self, pid: int) -> None:
        """`pid` (the guard) lives in the supervisor cgroup by right: never swept into a job's."""
        self._exempt.add(pid)

    def acquire(self) -> Slot:
        """An empty slot for one attempt; OSError if none can be made."""
        with self._lock:
            if self._closed:
                raise OSError(errno.ESHUTDOWN, "the worker is stopping", self.tree)
            if self._free:
                return self._free.pop()
        path = f"{self.tree}/{SLOT_PREFIX}{next(self._numbers)}"
        os.mkdir(path)
        try:
            slot = Slot(path)
        except OSError:
            with contextlib.suppress(OSError):
                os.rmdir(path)
            raise
        with self._lock:
            self._slots.append(slot)
        return slot

    def release(self, slot: Slot) -> None:
        """Take back a slot whose attempt is over: reused if empty, else killed; one that will
        not empty is never used again."""
        with self._lock:
            if self._closed:
                return
        try:
            if not slot.seen_empty and slot.populated():
                slot.kill()
                if not slot.wait_empty(EMPTY_WAIT):
                    log.error("cgroup %s did not empty when killed; jobs use another", slot.path)
                    return
        except OSError as e:
            log.error("cgroup %s: %s; jobs use another", slot.path, e.strerror)
            return
        with self._lock:
            self._free.append(slot)

    def start(
        self, slot: Slot, spawn: Callable[A, P], *args: A.args, **kwargs: A.kwargs
    ) -> tuple[P, str]:
        """Run `spawn` and put the process it starts, with whatever it forked meanwhile, in
        `slot`. Returns it and "" or, when it could not be moved (it was killed then), why."""
        with self._spawn_lock:
            child = spawn(*args, **kwargs)
            return child, self._settle(slot, child.pid)

    def _settle(self, slot: Slot, pid: int) -> str:
        try:
            slot.add(pid)
        except ProcessLookupError:
            pass  # exited already; its children, if any, are in the supervisor cgroup
        except OSError as e:
            self._kill_strays([pid])
            return f"cannot move it into cgroup {slot.path}: {e.strerror}"
        # The kernel does not move a process that is exiting (it says nothing): one still
        # listed after its move is on its way out, and can fork no more.
        moved = {pid}
        for _ in range(SWEEP_ROUNDS):
            strays = [p for p in self._strays() if p not in moved]
            if not strays:
                return ""
            for stray in strays:
                moved.add(stray)
                try:
                    slot.add(stray)
                except ProcessLookupError:
                    pass
                except OSError:
                    self._kill_strays([stray])
        log.warning("processes a job forked before it was moved kept forking: killed")
        self._kill_strays(self._strays())
        return ""

    def _strays(self) -> list[int]:
        listed = os.pread(self._sweep, 4096, 0)
        if listed == self._quiet:  # as after the last spawn: the worker and its guard only
            return []
        if len(listed) == 4096:  # more than a page of pids: read them all
            listed = _read(f"{self.supervisor}/cgroup.procs").encode()
        strays = [p for p in _pids(listed) if p not in self._exempt]
        if not strays:
            self._quiet = listed
        return strays

    def _kill_strays(self, pids: Iterable[int]) -> None:
        """SIGKILL `pids` and, until none is left (bounded: one that is exiting stays listed
        a while), whatever else shows up in the supervisor cgroup (a process being killed
        cannot fork any more)."""
        pids = list(pids)
        for _ in range(100):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            pids = self._strays()
            if not pids:
                return
            time.sleep(0.001)

    def close(self) -> None:
        """Go back to the cgroup this process came from, kill whatever is left in the tree
        (the guard has ended: nothing there is spared) and remove it. Slots still in use keep
        their descriptors: their threads may still read them, and the process is ending."""
        with self._lock:
            self._closed = True
            free, slots = list(self._free), list(self._slots)
        for slot in free:
            slot.close()
        with contextlib.suppress(OSError):
            os.close(self._sweep)
        try:
            _write(f"{self.base}/cgroup.procs", str(os.getpid()))
        except OSError as e:  # still inside: end the jobs' cgroups only
            log.warning("cannot leave cgroup %s: %s", self.supervisor, e.strerror)
            for slot in slots:
                slot.kill()
            return
        end_tree(self.tree)


def end_tree(tree: str) -> None:
    """Kill everything in a tree (cgroup.kill), wait (bounded) until it is empty, remove it."""
    with contextlib.suppress(OSError):
        _write(f"{tree}/cgroup.kill", "1")
    try:
        events = os.open(f"{tree}/cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        wait_empty(events, EMPTY_WAIT)
    finally:
        os.close(events)
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
    """A worker's tree as its guard sees it when the worker has exited or was killed.

    The guard first moves out to `home`, so that the tree can be killed whole and removed. If
    the worker is gone, everything left in the tree is its jobs' (a worker killed during a
    spawn may have left a job's first forks in the supervisor cgroup). If the worker is still
    there (a clean exit), only the jobs' cgroups are ended: the worker removes the tree after.
    """

    def __init__(self, tree: str, home: str, worker: int) -> None:
        self.tree = tree
        self._spare = {worker, os.getpid()}
        try:
            _write(f"{home}/cgroup.procs", str(os.getpid()))
            left = True
        except OSError:
            left = False
        self._whole = left and worker not in _pids_in(f"{tree}/{SUPERVISOR}")

    def members(self) -> list[int]:
        """Every process in the tree but the worker and this guard."""
        return [p for c in _cgroups_in(self.tree) for p in _pids_in(c) if p not in self._spare]

    def signal(self, sig: int) -> None:
        for pid in self.members():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def kill(self) -> None:
        if self._whole:
            with contextlib.suppress(OSError):
                _write(f"{self.tree}/cgroup.kill", "1")
            return
        for path in _cgroups_in(self.tree)[1:]:
            if path != f"{self.tree}/{SUPERVISOR}":
                with contextlib.suppress(OSError):
                    _write(f"{path}/cgroup.kill", "1")
        self.signal(signal.SIGKILL)  # and what is in the supervisor cgroup but the worker

    def remove(self) -> None:
        """Wait (bounded) until the killed processes are gone; remove what is empty."""
        deadline = time.monotonic() + EMPTY_WAIT
        while self.members() and time.monotonic() < deadline:
            time.sleep(0.01)
        remove_tree(self.tree)


def _pids_in(cgroup: str) -> list[int]:
    try:
        return _pids(_read(f"{cgroup}/cgroup.procs"))
    except OSError:
        return []
