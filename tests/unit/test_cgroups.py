"""Unit tests of dts.worker.cgroups and of the runner and guard in cgroup mode, on real cgroups.

They need root and a cgroup v2 hierarchy with cgroup.kill (Linux 5.14+): without them they are
skipped locally and fail in CI. A test that makes a tree moves the test process itself into
the tree's supervisor cgroup for the test's duration (as the worker moves itself), and a thread
that runs a job into a job cgroup; closing the tree takes them all back.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from dts.domain import Assignment, JobSpec, Outcome, Result
from dts.worker.cgroups import JobCgroups, Unavailable, hierarchy
from dts.worker.overtime import Overtime
from dts.worker.runner import Execution, RunOptions
from dts.worker.sandbox import RunAs
from tests.conftest import IN_CI
from tests.harness import kill_quietly, pid_alive, wait_until

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PURE = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


# ---- finding our cgroup -----------------------------------------------------------------------


def test_hierarchy_of_a_hybrid_host_is_the_unified_mount() -> None:
    own = "9:name=systemd:/\n1:cpu:/\n0::/\n"
    assert hierarchy(HYBRID, own) == "/sys/fs/cgroup/unified"
    assert hierarchy(HYBRID, "0::/system.slice/w.service\n") == (
        "/sys/fs/cgroup/unified/system.slice/w.service"
    )


def test_hierarchy_of_a_pure_v2_host() -> None:
    assert hierarchy(PURE, "0::/user.slice/x.scope\n") == "/sys/fs/cgroup/user.slice/x.scope"


def test_hierarchy_reads_escaped_mount_points_and_mounts_of_a_subtree() -> None:
    info = "50 1 0:40 /lxc/c1 /mnt/my\\040cgroups rw - cgroup2 none rw\n"
    assert hierarchy(info, "0::/lxc/c1/app\n") == "/mnt/my cgroups/app"
    assert hierarchy(info, "0::/elsewhere\n") is None  # not below what is mounted


@pytest.mark.parametrize(
    ("info", "own"),
    [
        ("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n", "0::/\n"),  # no cgroup2 mount
        (PURE, "1:cpu:/\n"),  # no v2 line: a pure v1 host
        (PURE, "0::/gone (deleted)\n"),
    ],
)
def test_hierarchy_is_none_without_a_usable_v2_cgroup(info: str, own: str) -> None:
    assert hierarchy(info, own) is None


# ---- the tree ---------------------------------------------------------------------------------


@pytest.fixture
def tree() -> Iterator[JobCgroups]:
    try:
        made = JobCgroups.create()
    except Unavailable as e:
        if IN_CI:  # CI runs as root on a kernel with cgroup.kill: a skip would hide a failure
            pytest.fail(f"no cgroups for jobs in CI: {e}")
        pytest.skip(f"no cgroups for jobs here: {e}")
    try:
        yield made
    finally:
        made.close()


def own_cgroup(pid: int | str = "self") -> str:
    text = Path(f"/proc/{pid}/cgroup").read_text()
    return next(line[3:] for line in text.splitlines() if line.startswith("0::"))


def cgroup_dir(pid: int | str) -> str:
    """The directory of a process's cgroup (the tree is on the mount the module found)."""
    base = hierarchy(Path("/proc/self/mountinfo").read_text(), "0::/\n")
    assert base is not None
    return os.path.normpath(base + own_cgroup(pid))


def read_pid(path: Path, started: list[int]) -> int:
    pid = int(wait_until(lambda: path.exists() and path.read_text().strip(), 10, what=str(path)))
    started.append(pid)
    return pid


@pytest.fixture
def started() -> Iterator[list[int]]:
    """Pids of escapees a test planted; SIGKILLed at teardown if still there."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(OSError):  # still ours: not a process that reused the pid
            if Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x0030\x00":
                kill_quietly(pid)


def thread_cgroup() -> str:
    """The cgroup directory of the calling thread (threads can be in different ones)."""
    return cgroup_dir(f"self/task/{threading.get_native_id()}")


def test_create_moves_this_process_into_the_tree_and_close_takes_it_back(
    tmp_path: Path, started: list[int]
) -> None:
    before = own_cgroup()
    try:
        made = JobCgroups.create()
    except Unavailable as e:
        if IN_CI:
            pytest.fail(f"no cgroups for jobs in CI: {e}")
        pytest.skip(str(e))
    assert made.tree.endswith(f"/dts-worker-{os.getpid()}")
    assert cgroup_dir("self") == f"{made.tree}/supervisor"
    # Given a job left running with a child in a session of its own
    slot = made.acquire()
    pidfile = tmp_path / "left.pid"
    made.start(
        slot, subprocess.Popen, ["setsid", "-f", "sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"]
    ).wait()
    left = read_pid(pidfile, started)
    # When the tree is closed, then the child is killed, we are back and the tree is gone
    made.close()
    assert own_cgroup() == before
    wait_until(lambda: not pid_alive(left), 5, what="the left-over child to end")
    assert not os.path.exists(made.tree)


def test_a_process_that_may_not_make_cgroups_is_told_why_and_nothing_is_left() -> None:
    # Given a process without the right to create cgroups where it is (an ordinary user)
    nobody = RunAs.lookup("nobody")
    probe = (  # imports first: this interpreter may live where nobody cannot read
        "import os\n"
        "from dts.worker.cgroups import JobCgroups, Unavailable\n"
        f"os.setgroups([]); os.setgid({nobody.gid}); os.setuid({nobody.uid})\n"
        "try:\n    JobCgroups.create()\nexcept Unavailable as e:\n    print(e)\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30)
    # Then it learns why, in one line, and no cgroup of its was left behind
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"cannot create cgroup \S+/dts-worker-\d+: Permission denied\n", r.stdout)
    assert not os.path.exists(r.stdout.split()[3].rstrip(":"))


def test_what_a_job_forks_at_once_is_born_in_its_cgroup(
    tree: JobCgroups, tmp_path: Path, started: list[int]
) -> None:
    pidfile = tmp_path / "forked.pid"
    slot = tree.acquire()

    def spawn_and_dawdle() -> int:
        # Given a job that forks a new session at once, and a spawn that returns only after
        # that fork (as a worker thread may, waiting for the GIL)
        pid = os.posix_spawnp(
            "setsid",
            ["setsid", "-f", "sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"],
            os.environ,
        )
        assert thread_cgroup() == slot.path
        read_pid(pidfile, started)
        return pid

    child = tree.start(slot, spawn_and_dawdle)
    # Then the job's fork is in the job's cgroup, where the thread that started it lives
    assert cgroup_dir(started[0]) == slot.path
    os.waitpid(child, 0)
    # And the slot, released with the fork in it, is emptied for the next attempt
    assert slot.populated()
    tree.release(slot)
    assert not pid_alive(started[0])
    assert tree.acquire() is slot and not slot.populated()


def test_signals_to_a_job_cgroup_never_reach_the_worker_thread_living_there(
    tree: JobCgroups,
) -> None:
    got: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda sig, frame: got.append(sig))
    try:
        # Given this thread in its job cgroup, with no job in it
        slot = tree.acquire()
        assert thread_cgroup() == slot.path
        # When the cgroup is signalled and killed, then this process gets nothing
        slot.signal(signal.SIGUSR1)
        assert got == []
        assert not slot.populated()
        assert slot.kill(1)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_kill_ends_a_job_that_keeps_forking(tree: JobCgroups) -> None:
    # Given a job that forks (new sessions) as fast as it can, a bounded number of times
    slot = tree.acquire()
    job = tree.start(
        slot,
        subprocess.Popen,
        ["sh", "-c", "for i in $(seq 3000); do setsid sleep 30 & done; wait"],
    )
    wait_until(lambda: len(Path(f"{slot.path}/cgroup.threads").read_text().split()) > 20, 10)
    # When it is killed while it forks, then the cgroup empties
    assert slot.kill(10)
    assert job.wait(10) == -signal.SIGKILL
    assert not slot.populated()
    tree.release(slot)


def escapee_job(pidfile: Path, then: str, ignore_term: bool = False) -> Assignment:
    """A shell job that plants a setsid escapee, waits until it is there, then runs `then`."""
    trap = "trap '' TERM; " if ignore_term else ""
    script = (
        f'setsid sh -c "{trap}echo \\$\\$ > {pidfile}; exec sleep 30" &\n'
        f"while ! [ -s {pidfile} ]; do sleep 0.01; done\n{then}"
    )
    return Assignment(7, 1, JobSpec(argv=(script,), shell=True))


def test_an_escapee_ends_with_its_job(tree: JobCgroups, tmp_path: Path, started: list[int]) -> None:
    opts = RunOptions(kill_grace=0.5, cgroups=tree)
    r = Execution(escapee_job(tmp_path / "e.pid", "echo done"), opts).run()
    assert (r.outcome, r.stdout) == (Outcome.SUCCEEDED, b"done\n")
    pid = read_pid(tmp_path / "e.pid", started)
    wait_until(lambda: not pid_alive(pid), 5, what="the escapee to end")


def test_an_escapee_of_a_run_as_job_ends_at_its_timeout(
    tree: JobCgroups, started: list[int]
) -> None:
    # the job runs as nobody, started by Popen (which can change user), not posix_spawn
    spot = Path(subprocess.check_output(["mktemp", "-d"], text=True).strip())
    spot.chmod(0o1777)
    try:
        opts = RunOptions(kill_grace=0.5, run_as=RunAs.lookup("nobody"), cgroups=tree)
        a = escapee_job(spot / "e.pid", "exec sleep 30")
        a = Assignment(a.job_id, a.attempt, JobSpec(argv=a.spec.argv, shell=True, timeout=1))
        r = Execution(a, opts).run()
        assert r.outcome is Outcome.TIMED_OUT
        pid = read_pid(spot / "e.pid", started)
        wait_until(lambda: not pid_alive(pid), 5, what="the escapee to end")
    finally:
        for f in spot.iterdir():
            f.unlink()
        spot.rmdir()


def test_stop_at_once_kills_an_escapee_without_waiting_for_the_grace(
    tree: JobCgroups, tmp_path: Path, started: list[int]
) -> None:
    opts = RunOptions(kill_grace=30, cgroups=tree)
    ex = Execution(escapee_job(tmp_path / "e.pid", "exec sleep 30", ignore_term=True), opts)
    results: list[Result] = []
    runner = threading.Thread(target=lambda: results.append(ex.run()))
    runner.start()
    pid = read_pid(tmp_path / "e.pid", started)
    t0 = time.monotonic()
    ex.stop(Outcome.RELEASED, "lease lost", at_once=True)
    runner.join(10)
    assert not runner.is_alive() and time.monotonic() - t0 < 10
    assert results[0].outcome is Outcome.RELEASED
    assert not pid_alive(pid)


def test_a_late_stop_of_a_finished_attempt_spares_the_next_one_in_its_cgroup(
    tree: JobCgroups, tmp_path: Path, started: list[int]
) -> None:
    opts = RunOptions(kill_grace=5, cgroups=tree)
    # Given an attempt that finished, and the next attempt of the same thread (so in the same
    # cgroup) running
    first = Execution(Assignment(1, 1, JobSpec(argv=("true",))), opts)
    pidfile = tmp_path / "next.pid"
    second = Execution(
        Assignment(2, 1, JobSpec(argv=(f"echo $$ > {pidfile}; exec sleep 30",), shell=True)),
        opts,
    )
    results: list[Result] = []
    runner = threading.Thread(target=lambda: [results.append(e.run()) for e in (first, second)])
    runner.start()
    read_pid(pidfile, started)
    assert results[0].outcome is Outcome.SUCCEEDED
    # When the finished attempt is told to stop at once (a late cancel or fence)
    first.stop(Outcome.RELEASED, "late", at_once=True)
    # Then the next attempt is not killed by it: only its own stop (TERM) ends it
    second.stop(Outcome.CANCELLED, "cancelled")
    runner.join(10)
    assert (results[1].outcome, results[1].exit_code) == (
        Outcome.CANCELLED,
        128 + signal.SIGTERM,
    )


def test_threads_that_grpc_starts_in_a_jobs_cgroup_do_not_keep_the_job_from_ending(
    tree: JobCgroups,
) -> None:
    # Given gRPC at work in the process: after a fork() it restarts its threads in the thread
    # that forked, so in that thread's job cgroup
    channel = grpc.insecure_channel("127.0.0.1:1")
    try:
        with contextlib.suppress(grpc.FutureTimeoutError):
            grpc.channel_ready_future(channel).result(timeout=0.2)
        # When a job is started by fork() (subprocess, which forks to change user)
        opts = RunOptions(kill_grace=0.5, run_as=RunAs.lookup("nobody"), cgroups=tree)
        a = Assignment(1, 1, JobSpec(argv=("true",), cwd="/"))
        results: list[Result] = []
        runner = threading.Thread(target=lambda: results.append(Execution(a, opts).run()))
        runner.daemon = True  # should it never end
        runner.start()
        runner.join(10)
        # Then the job ends as soon as its own processes have: the worker's threads in its
        # cgroup are not part of it
        assert not runner.is_alive(), "the job's cgroup never counted as empty"
        assert results[0].outcome is Outcome.SUCCEEDED
    finally:
        channel.close()


# ---- the guard --------------------------------------------------------------------------------

# A stand-in worker: its tree, its guard, and two jobs (started by two threads) that each left
# a child in a session of its own.
FAKE_WORKER = """\
import os, sys, threading, time
from dts.worker.cgroups import JobCgroups
from dts.worker.guard import Guard
from dts.worker.runner import Child
spot = sys.argv[1]
tree = JobCgroups.create()
guard = Guard(grace=0.5)
guard.start(tree)
def job(name):
    script = f"setsid sh -c 'echo $$ > {spot}/{name}.pid; exec sleep 30' & wait"
    tree.start(tree.acquire(), Child.spawn, ["sh", "-c", script], dict(os.environ), "")
job("one")
other = threading.Thread(target=job, args=("two",))
other.start()
other.join()
print(tree.tree, flush=True)
time.sleep(60)
"""


def test_guard_ends_the_jobs_and_the_tree_of_a_killed_worker(
    tmp_path: Path, started: list[int]
) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-c", FAKE_WORKER, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert worker.stdout is not None
        where = worker.stdout.readline().strip()
        if not where:
            err = worker.stderr.read() if worker.stderr else ""
            if "Unavailable" in err and not IN_CI:
                pytest.skip(err.strip().splitlines()[-1])
            pytest.fail(f"the stand-in worker failed: {err}")
        one = read_pid(tmp_path / "one.pid", started)
        two = read_pid(tmp_path / "two.pid", started)
        assert cgroup_dir(one) != cgroup_dir(two)
        # When the worker is killed outright
        worker.kill()
        worker.wait(10)
        # Then its guard ends both jobs' children and removes the tree
        for pid in (one, two):
            wait_until(lambda pid=pid: not pid_alive(pid), 10, what=f"process {pid} to end")
        wait_until(lambda: not os.path.exists(where), 10, what=f"{where} to be removed")
    finally:
        worker.kill()
        worker.communicate()


def test_a_slots_overtime_watch_is_not_born_in_its_job_cgroup(tree: JobCgroups) -> None:
    # Given a slot's thread that made its overtime watch (as a slot does, before any job) and
    # then ran a job, which moved the thread into the job's cgroup
    seen: list[tuple[list[str], int, bool]] = []

    def slot() -> None:
        watch = Overtime("dts-slot-overtime")
        Execution(Assignment(1, 1, JobSpec(argv=("true",))), RunOptions(cgroups=tree)).run()
        watch.start(30, lambda: None)  # the watch at work while the next job runs
        home = tree.acquire()
        listed = Path(home.path, "cgroup.threads").read_text().split()
        seen.append((listed, threading.get_native_id(), home.populated()))
        watch.end()

    runner = threading.Thread(target=slot, daemon=True)
    runner.start()
    runner.join(10)
    # Then the job's cgroup holds the slot's thread alone: telling that nothing of a job is
    # left there takes one read, not a look at each thread
    [(listed, tid, populated)] = seen
    assert listed == [str(tid)]
    assert not populated
