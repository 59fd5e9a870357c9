"""Process handling for the daemons: signals as events, locked PID files, daemonizing.

Signal handlers only set flags; the main loops act on them. gRPC servers, channels, Redis
clients and log files are created only after `daemonize()` (gRPC is not fork-safe).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import signal
import sys
import threading
import time
from types import FrameType

from dts.errors import DtsError, FailedPrecondition


class Signals:
    """SIGTERM/SIGINT ask for a stop (count kept: the second one means 'now'); SIGHUP a reload."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.hup = threading.Event()
        self.wakeup = threading.Event()  # set on any signal, for a main loop that waits on one
        self.stops = 0

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stops += 1
        self.stop.set()
        self.wakeup.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.hup.set()
        self.wakeup.set()


class PidFile:
    """A PID file held with an exclusive lock for the life of the process."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> str:
        """Lock and write our pid; returns a note when a stale file was replaced."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            old = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise FailedPrecondition(
                    f"already running as pid {old or '?'} (pid file {self.path} is locked)"
                ) from None
            raise
        previous = os.read(fd, 64).decode(errors="replace").strip()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return f"replaced stale pid file {self.path} (held {previous!r})" if previous else ""

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


class Readiness:
    """How a daemon tells the process that started it whether it came up.

    The protocol, one line each on a pipe: `pid N` as soon as the daemon runs, then `ok` or
    `error: REASON`. A closed pipe without either means the daemon died.
    """

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        if fd is not None:
            self._write(f"pid {os.getpid()}\n")

    def ready(self) -> None:
        self._send("ok\n")

    def failed(self, reason: str) -> None:
        self._send(f"error: {' '.join(reason.split())}\n")

    def _write(self, text: str) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, text.encode())
        except OSError:  # the starting process is gone (killed): nobody to tell
            os.close(self._fd)
            self._fd = None

    def _send(self, text: str) -> None:
        self._write(text)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def daemonize(prog: str, timeout: float = 30.0) -> Readiness:
    """Detach with python-daemon; the original process exits once the daemon reports ready.

    Returns (in the daemon) the Readiness to signal. The foreground process exits 0 on
    'ready', or 1 with the daemon's reason on stderr (also when it is not ready in `timeout`
    seconds: the daemon then keeps trying, and the message names its pid).
    """
    import daemon  # only the daemonizing path needs it

    r, w = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(w)
        sys.exit(_await_daemon(prog, r, pid, timeout))
    os.close(r)
    ctx = daemon.DaemonContext(
        detach_process=True,
        working_directory=os.getcwd(),  # relative --db / --log-file paths keep their meaning
        umask=0o027,  # logs, PID file and anything else it creates: not for other users
        files_preserve=[w],
        signal_map={},  # our own handlers, installed after this, only set events
        prevent_core=False,
    )
    ctx.open()
    return Readiness(w)


def _await_daemon(prog: str, fd: int, child: int, timeout: float) -> int:
    """In the starting process: read the daemon's report; the exit code of the launch."""
    deadline = time.monotonic() + timeout
    data = b""
    timed_out = False
    while not _reported(data):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(0.0, left))
        if not ready:
            timed_out = True
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(child, 0)  # the intermediate child exits as soon as the daemon detached
    lines = data.decode(errors="replace").splitlines()
    pid = next((ln[4:] for ln in lines if ln.startswith("pid ")), "?")
    last = next((ln for ln in lines if ln == "ok" or ln.startswith("error: ")), "")
    if last == "ok":
        return 0
    if last.startswith("error: "):
        message = last
    elif timed_out:
        message = (
            f"error: not ready after {timeout:g}s; the daemon (pid {pid}) goes on trying "
            "in the background (see its log)"
        )
    else:
        message = f"error: the daemon (pid {pid}) exited before it was ready (see its log)"
    sys.stderr.write(f"{prog}: {message}\n")
    return 1


def _reported(data: bytes) -> bool:
    """Whether the daemon's complete lines include its verdict (ok or error)."""
    return any(ln == b"ok" or ln.startswith(b"error: ") for ln in data.split(b"\n")[:-1])


def fail(prog: str, err: DtsError | OSError | str, code: int = 1) -> int:
    """Print one line about a fatal problem and return the exit code.

    Not when the problem was just logged to stderr: the log line says it already, and under
    journald every stderr line must carry a priority prefix.
    """
    if not _errors_logged_to_stderr():
        sys.stderr.write(f"{prog}: error: {err}\n")
    return code


def _errors_logged_to_stderr() -> bool:
    root = logging.getLogger()
    return root.isEnabledFor(logging.ERROR) and any(
        type(h) is logging.StreamHandler and h.stream is sys.stderr for h in root.handlers
    )
