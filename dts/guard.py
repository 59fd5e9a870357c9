"""The job guard: a tiny sidecar process that kills a worker's jobs when the worker dies.

PR_SET_PDEATHSIG is not delivered everywhere, so the worker starts this guard in its own
session and tells it, over a pipe, which process groups it runs. When the pipe reaches EOF
(the worker exited or was killed outright, SIGKILL included) the guard kills every group still
listed: TERM, then KILL after a grace. Only the worker reports results, so an orphaned job
could never report one anyway; the guard makes sure it does not keep running either.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger("dts.guard")


class Guard:
    """The worker's handle on its guard process."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._broken = False

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "dts.guard", str(self.grace)],
            stdin=subprocess.PIPE,
            start_new_session=True,  # a signal to the worker's group must not reach the guard
        )

    def add(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def remove(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    def _send(self, line: str) -> None:
        with self._lock:
            if self._proc is None or self._proc.stdin is None or self._broken:
                return
            try:  # one short write to the pipe: atomic, no buffering to flush
                os.write(self._proc.stdin.fileno(), line.encode())
            except (BrokenPipeError, ValueError, OSError):
                self._broken = True
                log.error("job guard exited: jobs may outlive this worker if it is killed")

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


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _kill_all(pgids: set[int], grace: float) -> None:
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pgids):
        time.sleep(0.05)
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def main() -> int:
    grace = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only EOF on stdin ends the guard
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    pgids: set[int] = set()
    for raw in sys.stdin.buffer:
        line = raw.strip()
        if line[:1] == b"+":
            pgids.add(int(line[1:]))
        elif line[:1] == b"-":
            pgids.discard(int(line[1:]))
    if pgids:
        _kill_all(pgids, grace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
