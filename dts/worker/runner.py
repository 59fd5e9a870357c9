"""The command runner: one attempt as its own process group, in a cgroup of its own where the
worker has cgroups (dts.worker.cgroups), output captured and capped, timeout and cancellation
enforced by killing all of it (TERM, then KILL after a grace): the cgroup, else the process
group."""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from dts.domain import (
    EXIT_CANNOT_RUN,
    EXIT_TIMED_OUT,
    Assignment,
    Outcome,
    Result,
    exit_code_for_signal,
)
from dts.limits import NO_LIMITS, Limits, lower_limit
from dts.live import marker
from dts.worker.cgroups import JobCgroups, Slot
from dts.worker.sandbox import (
    RunAs,
    find_program,
    job_directory,
    job_environment,
    limited_argv,
    within_hard_limits,
)
from dts.worker.tap import Tap

READ_CHUNK = 65536
POLL = 0.2  # seconds between checks for a stop request while a job runs
EXIT_NOT_EXECUTABLE = 126
NEVER_RAN = 0.0  # a Result's started_at when the command was never spawned: its run time unknown


class Capture:
    """Keeps the first and last `limit/2` bytes of a stream and counts what it dropped."""

    def __init__(self, limit: int) -> None:
        self.head_limit = limit - limit // 2
        self.tail_limit = limit // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0
        self.total = 0  # bytes fed: the offset of the next byte in the whole stream

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if not data:
            return
        self.tail += data
        excess = len(self.tail) - self.tail_limit
        if excess > 0:
            self.dropped += excess
            del self.tail[:excess]

    def pieces(self) -> list[tuple[int, bytes]]:
        """What is kept, at its offsets in the whole stream: the head, and the tail if apart."""
        if not self.dropped:
            return [(0, bytes(self.head + self.tail))] if self.head else []
        return [(0, bytes(self.head)), (self.total - len(self.tail), bytes(self.tail))]

    def value(self) -> bytes:
        if not self.dropped:
            return bytes(self.head + self.tail)
        return bytes(self.head) + marker(self.dropped) + bytes(self.tail)


@dataclass(frozen=True)
class RunOptions:
    """How the worker runs every job."""

    max_output: int = 1 << 20  # the operator's cap of kept output (jobs may ask for less)
    kill_grace: float = 5.0
    default_cwd: str = ""
    base_env: Mapping[str, str] | None = None  # jobs' starting environment; None: derive it
    run_as: RunAs | None = None  # run jobs as this user instead of the worker's
    limits_cap: Limits = NO_LIMITS  # the operator's resource limits (jobs may ask for lower ones)
    max_timeout: float = 0.0  # the operator's cap of a job's timeout; 0: none
    prlimit: str | None = None  # util-linux prlimit, needed by jobs with resource limits
    cgroups: JobCgroups | None = None  # a cgroup per attempt; None: process groups only

    @functools.cached_property
    def caps(self) -> Limits:
        """The operator's limits, output included, within the worker's own hard rlimits."""
        return within_hard_limits(replace(self.limits_cap, output=self.max_output))


class Execution:
    """One attempt of a job. `run()` blocks in the job's thread; `stop()` may come from any."""

    def __init__(
        self,
        assignment: Assignment,
        opts: RunOptions,
        on_spawn: Callable[[int], None] = lambda pgid: None,
        on_reap: Callable[[int], None] = lambda pgid: None,
    ) -> None:
        self.assignment = assignment
        self.opts = opts
        self._on_spawn = on_spawn
        self._on_reap = on_reap
        self._stop_outcome: Outcome | None = None
        self._stop_reason = ""
        self._at_once = False
        self._lock = threading.Lock()
        self.pid: int | None = None
        self._slot: Slot | None = None  # the attempt's cgroup, while it is the attempt's
        self.tap: Tap | None = None  # set by the live sender while someone follows the attempt

    def stop(self, outcome: Outcome, reason: str, at_once: bool = False) -> None:
        """Kill the job: CANCELLED (user asked) or RELEASED (worker draining or fenced).

        `at_once` skips the TERM grace: a worker that lost its lease must stop the job before
        the server hands it to another worker.
        """
        with self._lock:
            if self._stop_outcome is None:
                self._stop_outcome = outcome
                self._stop_reason = reason
            self._at_once = self._at_once or at_once
            if at_once and self.pid is not None:  # now, not at the supervising thread's poll
                _killpg(self.pid, signal.SIGKILL)
                if self._slot is not None:  # under the lock: never a later attempt's cgroup
                    self._slot.signal(signal.SIGKILL)

    def run(self) -> Result:
        a = self.assignment
        spec = a.spec
        argv = ["/bin/sh", "-c", spec.argv[0]] if spec.shell else list(spec.argv)
        user = self.opts.run_as
        base = self.opts.base_env
        env = dict(base) if base is not None else job_environment(os.environ, (), user)
        env.update(spec.env)
        env["DTS_JOB_ID"] = str(a.job_id)
        env["DTS_ATTEMPT"] = str(a.attempt)
        cwd = spec.cwd or self.opts.default_cwd
        caps = self.opts.caps
        limits = caps if spec.limits == NO_LIMITS else within_hard_limits(spec.limits.within(caps))
        timeout = lower_limit(spec.timeout or 0.0, self.opts.max_timeout)
        if self._stop_outcome is not None:  # stopped before it started: nothing to kill
            return self._result(self._stop_outcome, None, self._stop_reason, b"", b"", NEVER_RAN)
        if limits.rlimits and self.opts.prlimit is None:
            return self._result(
                Outcome.FAILED,
                EXIT_CANNOT_RUN,
                f"cannot apply resource limits ({replace(limits, output=0).describe()}): "
                "prlimit (util-linux) is not installed on this worker",
                b"",
                b"",
                NEVER_RAN,
            )
        cgroups = self.opts.cgroups
        try:
            slot = cgroups.acquire() if cgroups is not None else None
        except OSError as e:
            why = f"cannot make a cgroup for the job: {e.strerror or e}"
            return self._result(Outcome.FAILED, EXIT_CANNOT_RUN, why, b"", b"", NEVER_RAN)
        try:
            return self._run(argv, env, cwd, slot, limits, timeout)
        finally:
            if slot is not None:
                assert cgroups is not None
                with self._lock:  # from here on, stop() has no cgroup to kill
                    self._slot = None
                cgroups.release(slot)

    def _run(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        slot: Slot | None,
        limits: Limits,
        timeout: float,
    ) -> Result:
        spec = self.assignment.spec
        program = spec.argv[0] if not spec.shell else argv[0]
        enter = ""  # the directory the spawn enters, once the job's user may reach `cwd`
        try:
            if limits.rlimits and self.opts.prlimit is not None:
                argv = limited_argv(self.opts.prlimit, limits, argv, env.get("PATH", os.defpath))
            with job_directory(cwd, self.opts.run_as) as enter:  # with the job user's rights
                started = time.time()  # the command's own start, as near its spawn as can be
                child = self._spawn(argv, env, enter, slot)
        except OSError as e:
            code = EXIT_NOT_EXECUTABLE if isinstance(e, PermissionError) else EXIT_CANNOT_RUN
            why = spawn_error(e, program, cwd, enter)
            return self._result(Outcome.FAILED, code, why, b"", b"", NEVER_RAN)
        self._on_spawn(child.pid)
        try:
            outcome, out, err = self._supervise(child, slot, timeout, limits.output)
        finally:
            rc = child.reap()
            self._on_reap(child.pid)
            child.close()
        return self._verdict(Ended(outcome, rc, child.cpu_time, out, err), limits, timeout, started)

    def _verdict(self, end: Ended, limits: Limits, timeout: float, started: float) -> Result:
        """The attempt's result, from how its process ended and why."""
        spec = self.assignment.spec
        outcome, rc, out, err = end.outcome, end.rc, end.out, end.err
        code = rc if rc >= 0 else exit_code_for_signal(-rc)
        if outcome is None and rc != 0 and self._stop_outcome is not None:
            # stopped while it ran, and it died of it (an at-once stop kills it straight away,
            # before the supervising loop looks at the request): the stop's outcome, not a
            # failure of the job
            outcome = self._stop_outcome
        if outcome is Outcome.TIMED_OUT:
            by_worker = self.opts.max_timeout and timeout == self.opts.max_timeout
            capped = " (the worker's max-timeout)" if by_worker and timeout != spec.timeout else ""
            return self._result(
                outcome, EXIT_TIMED_OUT, f"timed out after {timeout:g}s{capped}", out, err, started
            )
        if outcome is not None:
            return self._result(outcome, code, self._stop_reason, out, err, started)
        if rc == 0:
            return self._result(Outcome.SUCCEEDED, 0, "", out, err, started)
        if rc < 0:
            name = signal.Signals(-rc).name if -rc in signal.valid_signals() else str(-rc)
            why = f"killed by signal {-rc} ({name})"
            if limits.cpu and (
                -rc == signal.SIGXCPU or (-rc == signal.SIGKILL and end.cpu_time >= limits.cpu)
            ):
                why = f"CPU time limit of {limits.cpu}s reached ({why})"
            return self._result(Outcome.FAILED, code, why, out, err, started)
        return self._result(Outcome.FAILED, code, f"exited with code {rc}", out, err, started)

    def _spawn(self, argv: list[str], env: dict[str, str], cwd: str, slot: Slot | None) -> Child:
        """Start the job, in `slot` if it has one."""
        user = self.opts.run_as
        if slot is None:
            child = Child.spawn(argv, env, cwd, user)
        else:
            assert self.opts.cgroups is not None
            child = self.opts.cgroups.start(slot, Child.spawn, argv, env, cwd, user)
        with self._lock:
            self.pid = child.pid
            self._slot = slot
        return child

    def _supervise(
        self, child: Child, slot: Slot | None, timeout: float, max_output: int
    ) -> tuple[Outcome | None, bytes, bytes]:
        """Read output until the job and everything left of it are gone: its cgroup (`slot`)
        if it has one, else its process group.

        Timeout or stop: TERM all of it, KILL it after the grace. When the job's main process
        exits (it is reaped at once; a group id stays reserved while members live), what is
        left of it gets the same treatment.
        """
        caps = {child.stdout: Capture(max_output), child.stderr: Capture(max_output)}
        # Reads happen only when poll says a pipe is readable, so the pipes stay blocking. The
        # main process's exit is usually seen as EOF on both pipes and a reap that finds it
        # gone; a pidfd is opened only for jobs that live past the first poll or that close
        # their output before they exit.
        poller = select.poll()  # no descriptor of its own to create and close, unlike epoll
        for fd in caps:
            poller.register(fd, select.POLLIN)
        pidfd: int | None = None
        w = Watch(child.pid, slot, time.monotonic() + timeout if timeout > 0 else None)
        open_pipes = len(caps)
        try:
            while True:
                tap = self.tap
                if tap is not None and not tap.primed:  # a follow began: all kept so far first
                    _prime(tap, caps[child.stdout], caps[child.stderr])
                now = time.monotonic()
                self._escalate(w, now)
                if w.exited and not (w.leftovers if w.term_at is None else _alive(w.pgid, slot)):
                    if open_pipes == 0:
                        break
                    if w.term_at is not None and now >= w.term_at + self.opts.kill_grace + 1:
                        break  # something outside the job holds our pipes: stop waiting
                if not w.exited and pidfd is None and open_pipes == 0:
                    w.exited = child.reaped_now()
                    if not w.exited:  # it closed its output but runs on: watch its exit
                        pidfd = os.pidfd_open(child.pid)
                        poller.register(pidfd, select.POLLIN)
                    continue
                wait = POLL if not w.exited else 0.05
                if w.deadline is not None and w.term_at is None:
                    wait = min(wait, max(0.0, w.deadline - now))
                events = poller.poll(wait * 1000)
                if not events and not w.exited and pidfd is None:
                    pidfd = os.pidfd_open(child.pid)  # a longer job: learn its exit at once
                    poller.register(pidfd, select.POLLIN)
                for fd, _ in events:
                    if fd == pidfd:
                        w.exited = True
                        child.reap()  # now, so the group probe sees only the leftovers
                        poller.unregister(pidfd)
                        continue
                    try:
                        chunk = os.read(fd, READ_CHUNK)
                    except BlockingIOError:
                        continue
                    if chunk:
                        cap = caps[fd]
                        cap.feed(chunk)
                        tap = self.tap
                        if tap is not None and tap.primed:
                            tap.add(fd != child.stdout, cap.total - len(chunk), chunk)
                    else:
                        poller.unregister(fd)
                        open_pipes -= 1
        finally:
            if pidfd is not None:
                os.close(pidfd)
        return (w.outcome, caps[child.stdout].value(), caps[child.stderr].value())

    def _escalate(self, w: Watch, now: float) -> None:
        """TERM all of the job when it times out or is stopped, or when its main process is
        gone and members are left; KILL it after the grace (at once for an at-once stop)."""
        if w.term_at is None:
            if not w.exited and w.deadline is not None and now >= w.deadline:
                w.outcome = Outcome.TIMED_OUT
            elif not w.exited and self._stop_outcome is not None:
                w.outcome = self._stop_outcome
            if w.outcome is None and w.exited:
                w.leftovers = _alive(w.pgid, w.slot)
            if w.outcome is not None or (w.exited and w.leftovers):
                w.term_at = now
                _signal(w.pgid, w.slot, signal.SIGTERM)
        if w.term_at is not None and (self._at_once or now >= w.term_at + self.opts.kill_grace):
            if not w.killed:
                w.killed = True
                _signal(w.pgid, w.slot, signal.SIGKILL)
            elif w.slot is not None:
                w.slot.signal(signal.SIGKILL)  # what forked while the last one went out

    def _result(
        self, outcome: Outcome, code: int | None, error: str, out: bytes, err: bytes, started: float
    ) -> Result:
        a = self.assignment
        return Result(a.job_id, a.attempt, outcome, code, error, out, err, started, time.time())


def _prime(tap: Tap, out: Capture, err: Capture) -> None:
    """Put in the tap what the runner kept of the attempt's output before it was followed."""
    for stream, cap in enumerate((out, err)):
        for offset, data in cap.pieces():
            tap.add(stream, offset, data, whole=True)
    tap.primed = True


@dataclass
class Watch:
    """What the runner knows of a running job as it watches it."""

    pgid: int  # its process group: the main process's pid
    slot: Slot | None  # its cgroup, if it has one
    deadline: float | None  # monotonic time of its timeout
    outcome: Outcome | None = None  # why it is being stopped, if it is
    exited: bool = False  # its main process is gone (reaped)
    term_at: float | None = None  # when all of it got SIGTERM
    killed: bool = False  # all of it got SIGKILL
    leftovers: bool = False  # members of the group were left after the main process exited


@dataclass(frozen=True)
class Ended:
    """How a job's process ended: why it was stopped, if it was; its wait status; its CPU
    time; what it printed."""

    outcome: Outcome | None
    rc: int
    cpu_time: float
    out: bytes
    err: bytes


def spawn_error(e: OSError, program: str, cwd: str, enter: str) -> str:
    """Why a job did not start: its directory (`cwd`, which the spawn enters as `enter`) could
    not be entered, or its program not run there."""
    reason = e.strerror or str(e)
    if cwd and (not enter or e.filename in (cwd, enter)):
        return f"cannot run {program}: cannot enter {cwd}: {reason}"
    failed = e.filename if e.filename and e.filename != enter else program
    return f"cannot run {failed}{f' in {cwd}' if cwd else ''}: {reason}"


class Child:
    """A job's main process: its pid, the read ends of its stdout and stderr, and its reaping.

    Started with posix_spawn (no copy of the worker's page tables, no Python code between
    fork and exec), in a session of its own with default signal dispositions. posix_spawn
    cannot change directory or user before exec here, so a job with a working directory
    other than the worker's, or run as another user, takes subprocess.Popen, which can.
    """

    def __init__(self, pid: int, stdout: int, stderr: int, popen: subprocess.Popen[bytes] | None):
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self._popen = popen
        self._status: int | None = None
        self.cpu_time = 0.0  # seconds of CPU the process (and children it waited for) used

    @classmethod
    def spawn(
        cls, argv: list[str], env: dict[str, str], cwd: str, user: RunAs | None = None
    ) -> Child:
        if user is not None or (cwd and os.path.realpath(cwd) != _here()):
            proc = subprocess.Popen(
                argv,
                stdin=_devnull(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=cwd or None,
                start_new_session=True,
                user=user.uid if user else None,
                group=user.gid if user else None,
                extra_groups=list(user.groups) if user else None,
            )
            assert proc.stdout is not None and proc.stderr is not None
            return cls(proc.pid, proc.stdout.fileno(), proc.stderr.fileno(), proc)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        program = argv[0]
        search = os.posix_spawnp
        if "/" not in program and env.get("PATH") != _worker_path():
            # posix_spawnp searches the worker's PATH; the job asked for its own
            program, search = find_program(program, env.get("PATH", os.defpath)), os.posix_spawn
        try:
            pid = search(
                program,
                argv,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, _devnull(), 0),
                    (os.POSIX_SPAWN_DUP2, out_w, 1),
                    (os.POSIX_SPAWN_DUP2, err_w, 2),
                ],
                setsid=True,
                setsigdef=DEFAULT_SIGNALS,
            )
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (out_w, err_w):
                os.close(fd)
        return cls(pid, out_r, err_r, None)

    def reap(self) -> int:
        """Wait for the process to exit (once); its return code, -N for signal N."""
        if self._status is None:
            self._wait(0)
        assert self._status is not None
        return self._status

    def reaped_now(self) -> bool:
        """Reap the process if it has exited already; whether it has."""
        return self._status is not None or self._wait(os.WNOHANG)

    def _wait(self, options: int) -> bool:
        pid, status, usage = os.wait4(self.pid, options)
        if pid == 0:
            return False
        self._status = os.waitstatus_to_exitcode(status)
        self.cpu_time = usage.ru_utime + usage.ru_stime
        if self._popen is not None:
            self._popen.returncode = self._status  # reaped here, not by Popen
        return True

    def close(self) -> None:
        if self._popen is not None:
            for pipe in (self._popen.stdout, self._popen.stderr):
                if pipe is not None:
                    pipe.close()
            return
        for fd in (self.stdout, self.stderr):
            try:  # noqa: SIM105 (once per job: a plain try costs less than contextlib.suppress)
                os.close(fd)
            except OSError:
                pass


# Python ignores SIGPIPE (and SIGXFSZ); a job starts with every signal at its default, as a
# job started from a shell would.
DEFAULT_SIGNALS = tuple(
    s
    for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    if s in signal.valid_signals()
)

_DEVNULL: list[int] = []


@functools.cache
def _worker_path() -> str | None:
    """The worker's own PATH, which posix_spawnp searches (os.environ decodes on every read)."""
    return os.environ.get("PATH")


def _here() -> str:
    try:
        return os.getcwd()
    except OSError:  # the worker's directory is gone
        return ""


def close_inherited_fds() -> None:
    """Mark every descriptor above stderr close-on-exec, so jobs (started with posix_spawn,
    which closes nothing itself) get none the worker inherited from whoever started it."""
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2:
                with contextlib.suppress(OSError):
                    os.set_inheritable(fd, False)


def _devnull() -> int:
    """One /dev/null descriptor for every job's stdin (subprocess would open one per job)."""
    if not _DEVNULL:
        _DEVNULL.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    return _DEVNULL[0]


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Members exist, but orphans that already exited stay zombies until init reaps them;
    # look closer before waiting on a group that is in fact dead.
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != b"Z":
                return True
    return False


def _alive(pgid: int, slot: Slot | None) -> bool:
    """Whether anything of the job runs on: in its cgroup if it has one, else in its group."""
    return slot.populated() if slot is not None else _group_alive(pgid)


def _signal(pgid: int, slot: Slot | None, sig: int) -> None:
    """TERM or KILL the job: its process group, and every process of its cgroup if it has one."""
    _killpg(pgid, sig)
    if slot is not None:
        slot.signal(sig)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
