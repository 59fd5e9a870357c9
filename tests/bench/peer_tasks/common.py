"""The job every peer runs: `true` through subprocess.run, then one "<start> <end>" line."""

from __future__ import annotations

import os
import subprocess
import time

#: redis URL of the peer's own redis-server, set by tests/bench/peers.py
REDIS_URL = os.environ.get("PEERS_BENCH_REDIS", "redis://127.0.0.1:6399/0")
#: the file each finished job appends its line to
LINES = os.environ.get("PEERS_BENCH_LINES", "/dev/null")

_fd = -1
_pid = 0


def _out() -> int:
    """The O_APPEND fd, opened once per process (a forked child opens its own)."""
    global _fd, _pid
    if _pid != os.getpid():
        _fd = os.open(LINES, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _pid = os.getpid()
    return _fd


def record() -> None:
    start = time.time()
    subprocess.run(["true"], check=True)
    end = time.time()
    os.write(_out(), f"{start:.6f} {end:.6f}\n".encode())
