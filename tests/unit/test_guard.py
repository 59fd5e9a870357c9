"""The job guard kills the groups listed in its table when the worker's pipe closes."""

from __future__ import annotations

import subprocess

from dts.worker.guard import Guard
from tests.harness import pid_alive, wait_until


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "30"], start_new_session=True)


def test_guard_kills_listed_groups_when_the_worker_goes() -> None:
    guard = Guard(grace=0.5, capacity=4)
    guard.start()
    listed, removed, never = _sleeper(), _sleeper(), _sleeper()
    try:
        # Given one job listed, one listed then removed, one never listed
        guard.add(listed.pid)
        guard.add(removed.pid)
        guard.remove(removed.pid)
        # When the worker's end of the pipe closes, as it does when the worker is killed
        proc = guard._proc
        assert proc is not None and proc.stdin is not None
        proc.stdin.close()
        # Then the guard kills the listed group, and only that one
        wait_until(lambda: listed.poll() is not None, 10)
        assert proc.wait(10) == 0
        assert removed.poll() is None and never.poll() is None
    finally:
        for p in (listed, removed, never):
            p.kill()
            p.wait()
        guard.close()


def test_guard_table_reuses_freed_entries() -> None:
    guard = Guard(grace=0.5, capacity=2)
    guard.start()
    procs = [_sleeper() for _ in range(3)]
    try:
        # Entries freed by remove() are used again: more jobs over time than the table holds
        for p in procs:
            guard.add(p.pid)
            guard.remove(p.pid)
        guard.add(procs[0].pid)
        guard.add(procs[1].pid)
        proc = guard._proc
        assert proc is not None and proc.stdin is not None
        proc.stdin.close()
        wait_until(lambda: procs[0].poll() is not None and procs[1].poll() is not None, 10)
        assert pid_alive(procs[2].pid)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        guard.close()
