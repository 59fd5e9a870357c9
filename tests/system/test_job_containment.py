"""No process of a job outlives its attempt: not one that left the job's process group and
session (setsid, a double fork, a daemon), whether the job exits, times out, is cancelled, or
its worker drains or is killed outright.

Each job plants an escapee that writes its pid to a file in a directory every user may write
(`--run-as` jobs too); the test then ends the attempt and polls, with a deadline, until the
escapee is gone.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dts.domain import JobSpec
from tests.conftest import Cluster
from tests.harness import kill_quietly, pid_alive, wait_until

# fork, setsid, fork again, leave the directory, close every descriptor: a classic daemon
DAEMON = """\
import os, sys
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.chdir("/")
        os.closerange(0, os.sysconf("SC_OPEN_MAX"))
        os.open(os.devnull, os.O_RDWR), os.dup(0), os.dup(0)
        with open(sys.argv[1] + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(sys.argv[1] + ".tmp", sys.argv[1])
        os.execvp("sleep", ["sleep", "300"])
    os._exit(0)
os.wait()
"""

# How each job plants its escapee; {p} is the pid file, {py} the daemon script.
ESCAPES = {
    "setsid": "setsid sh -c 'echo $$ > {p}; exec sleep 300' &",
    "double-fork": "(setsid sh -c 'echo $$ > {p}; exec sleep 300' &)",
    "daemon": sys.executable + " {py} {p}",
}
WAIT_FOR_PIDFILE = "while ! [ -s {p} ]; do sleep 0.01; done"


@pytest.fixture(scope="module")
def spot() -> Iterator[Path]:
    """A directory any user may write (jobs of `--run-as nobody` too), and the daemon script;
    escapees that a failing test leaves running are killed at the end."""
    d = Path(tempfile.mkdtemp(prefix="dts-escape-", dir="/tmp"))
    d.chmod(0o1777)
    (d / "daemon.py").write_text(DAEMON)
    (d / "daemon.py").chmod(0o644)
    yield d
    for f in d.glob("*.pid"):
        with contextlib.suppress(ValueError, OSError):
            end_escapee(int(f.read_text()), f)
    for f in d.iterdir():
        f.unlink()
    d.rmdir()


def job(spot: Path, kind: str, name: str, then: str) -> tuple[str, Path]:
    """A shell job that plants a `kind` escapee, waits until it is there, then runs `then`."""
    pidfile = spot / f"{name}.pid"
    fill = {"p": str(pidfile), "py": str(spot / "daemon.py")}
    script = f"{ESCAPES[kind].format(**fill)}\n{WAIT_FOR_PIDFILE.format(**fill)}\n{then}"
    return script, pidfile


def planted(pidfile: Path) -> int:
    text = wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 30, what=pidfile)
    return int(text)


def escapee_alive(pid: int, pidfile: Path) -> bool:
    """Whether `pid` still runs as the escapee that wrote `pidfile` (its `sleep 300`, or what
    execs it), not as a process that reused the pid."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    ours = cmdline == b"sleep\x00300\x00" or str(pidfile).encode() in cmdline
    return ours and pid_alive(pid)


def assert_running(pid: int, pidfile: Path) -> None:
    """The escapee is there. Polled: between writing its pid file and exec'ing `sleep`, a
    process's cmdline reads empty for an instant, which is not its end."""
    wait_until(lambda: escapee_alive(pid, pidfile), 10, what=f"escapee {pid} running")


def end_escapee(pid: int, pidfile: Path) -> None:
    if escapee_alive(pid, pidfile):
        kill_quietly(pid)


def assert_gone(pid: int, pidfile: Path, why: str) -> None:
    try:
        wait_until(
            lambda: not escapee_alive(pid, pidfile), 10, what=f"escapee {pid} to end ({why})"
        )
    finally:
        end_escapee(pid, pidfile)


def submit(cluster: Cluster, *args: str) -> int:
    r = cluster.cli("submit", *args)
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def wait_status(cluster: Cluster, job_id: int, *statuses: str) -> str:
    with cluster.client() as c:
        return wait_until(
            lambda: (s := c.get(job_id).status.value) in statuses and s, 30, what=statuses
        )


@pytest.mark.parametrize("kind", ESCAPES)
def test_escapee_ends_when_its_job_exits(cluster: Cluster, spot: Path, kind: str) -> None:
    # Given a job that plants an escapee and exits 0
    script, pidfile = job(spot, kind, f"{kind}-exit", "exit 0")
    r = cluster.cli("submit", "--wait", "--shell", "--", script)
    # When it has succeeded, then its escapee is gone too
    assert r.returncode == 0, r.stderr
    assert_gone(planted(pidfile), pidfile, "job exited")


@pytest.mark.parametrize("kind", ESCAPES)
def test_escapee_ends_when_its_job_times_out(cluster: Cluster, spot: Path, kind: str) -> None:
    script, pidfile = job(spot, kind, f"{kind}-timeout", "exec sleep 300")
    r = cluster.cli("submit", "--wait", "--timeout", "2", "--shell", "--", script)
    assert r.returncode == 124, r.stderr
    assert_gone(planted(pidfile), pidfile, "job timed out")


@pytest.mark.parametrize("kind", ESCAPES)
def test_escapee_ends_when_its_job_is_cancelled(cluster: Cluster, spot: Path, kind: str) -> None:
    script, pidfile = job(spot, kind, f"{kind}-cancel", "exec sleep 300")
    job_id = submit(cluster, "--shell", "--", script)
    pid = planted(pidfile)
    assert_running(pid, pidfile)
    assert cluster.cli("cancel", str(job_id)).returncode == 0
    assert wait_status(cluster, job_id, "cancelled") == "cancelled"
    assert_gone(pid, pidfile, "job cancelled")


@pytest.mark.parametrize("kind", ESCAPES)
def test_escapee_ends_when_its_worker_drains(fresh_cluster: Cluster, spot: Path, kind: str) -> None:
    w = fresh_cluster.add_worker("drainer", "--drain-timeout", "0.5", "--kill-grace", "1")
    script, pidfile = job(spot, kind, f"{kind}-drain", "exec sleep 300")
    submit(fresh_cluster, "--shell", "--", script)
    pid = planted(pidfile)
    assert_running(pid, pidfile)
    # When the worker gets SIGTERM and its drain timeout passes, then it exits 0
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0
    assert_gone(pid, pidfile, "worker drained")


@pytest.mark.parametrize("kind", ESCAPES)
def test_escapee_ends_when_its_worker_is_killed(
    fresh_cluster: Cluster, spot: Path, kind: str
) -> None:
    w = fresh_cluster.add_worker("doomed", "--kill-grace", "1")
    script, pidfile = job(spot, kind, f"{kind}-kill", "exec sleep 300")
    job_id = submit(fresh_cluster, "--retries", "0", "--shell", "--", script)
    pid = planted(pidfile)
    assert_running(pid, pidfile)
    # When the worker is SIGKILLed, then its guard ends the escapee
    w.signal(signal.SIGKILL)
    w.wait()
    assert_gone(pid, pidfile, "worker killed")
    fresh_cluster.cli("cancel", str(job_id))


def test_escapee_of_a_run_as_job_ends_at_its_timeout(fresh_cluster: Cluster, spot: Path) -> None:
    # Given a root worker running its jobs as nobody (the spawn path that can change user)
    fresh_cluster.add_worker("sandboxed", "--run-as", "nobody", "--kill-grace", "1")
    script, pidfile = job(spot, "setsid", "run-as-timeout", "exec sleep 300")
    r = fresh_cluster.cli("submit", "--wait", "--timeout", "2", "--shell", "--", script)
    assert r.returncode == 124, r.stderr
    pid = planted(pidfile)
    assert_gone(pid, pidfile, "run-as job timed out")


def sleepers(tag: str) -> list[int]:
    """Processes running `sleep TAG`."""
    found = []
    want = f"sleep\0{tag}\0".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry.name}/cmdline", "rb") as f:
            if f.read().endswith(want) and pid_alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def test_jobs_that_fork_at_once_leave_nothing_behind(cluster: Cluster) -> None:
    # Given jobs whose program forks a new session the moment it starts (the window between a
    # job's spawn and its move into its cgroup); each child keeps the job's output open
    tag = f"300.{secrets.randbelow(10**9)}"
    with cluster.client() as c:
        ids = [j.id for j in c.submit([JobSpec(argv=("setsid", "-f", "sleep", tag))] * 30)]
    try:
        # When the jobs' programs have exited, then the jobs end (nothing holds their
        # output any more) and none of their children runs on
        with cluster.client() as c:
            wait_until(
                lambda: all(c.get(i).status.value == "succeeded" for i in ids),
                60,
                what="the jobs to succeed",
            )
        wait_until(lambda: not sleepers(tag), 10, what=f"sleep {tag} processes to end")
    finally:
        with cluster.client() as c:
            for i in ids:
                if c.get(i).status.value not in ("succeeded", "failed", "cancelled"):
                    c.cancel(i)
        for pid in sleepers(tag):
            kill_quietly(pid)
