"""Under the shipped dts-worker@ unit (User=dts, Delegate=yes), each job runs in a cgroup of its
own below the unit's, and a process the job moved out of its session (setsid) ends with it.

Expected duration: ~20 s once the container is booted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from tests.systemd.container import Container, wait_for
from tests.systemd.test_units import messages

pytestmark = pytest.mark.timeout(300)

SPOT = "/var/lib/dts-worker"  # the jobs' directory, writable by them


def escapee_script(pidfile: str) -> str:
    return (
        f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' &\n"
        f"while ! [ -s {pidfile} ]; do sleep 0.01; done\nexec sleep 300"
    )


def running(box: Container, pid: str) -> bool:
    """Whether `pid` runs in the container (a zombie does not)."""
    r = box.sh(f"grep -q '^State:.Z' /proc/{pid}/status", check=False)
    return r.returncode == 1  # the file exists and says it is no zombie


def planted(box: Container, pidfile: str) -> str:
    return str(
        wait_for(
            lambda: box.run("cat", pidfile, check=False).stdout.strip(), 30, f"{pidfile} written"
        )
    )


@pytest.fixture
def worker(box: Container) -> Iterator[str]:
    box.run("systemctl", "start", "dts-server", "dts-worker@1")
    box.run("systemctl", "stop", "dts-worker@2", "dts-worker@3", "dts-worker@4", check=False)
    try:
        yield "dts-worker@1"
    finally:  # the other tests of the tier must not meet this worker (it would take their jobs)
        box.run("systemctl", "stop", "dts-worker@1", check=False)


def test_the_worker_under_systemd_runs_jobs_in_cgroups_of_their_own(
    box: Container, worker: str
) -> None:
    lines = messages(box, "-u", worker)
    assert any("jobs run in cgroups of their own under" in m for m in lines), lines
    assert not any("jobs run without cgroups" in m for m in lines)
    # a job's cgroup is a slot of the worker's tree, below the unit's delegated cgroup
    r = box.run("dts-client", "submit", "--wait", "--", "cat", "/proc/self/cgroup")
    slot = r"^0::/.*/dts-worker@1\.service/dts-worker-\d+/supervisor/job-\d+$"
    assert re.search(slot, r.stdout, re.M), r.stdout


def test_a_setsid_escapee_ends_at_its_jobs_timeout(box: Container, worker: str) -> None:
    pidfile = f"{SPOT}/escapee-timeout.pid"
    box.run("rm", "-f", pidfile)
    r = box.run(
        "dts-client",
        "submit",
        "--wait",
        "--timeout",
        "3",
        "--shell",
        "--",
        escapee_script(pidfile),
        check=False,
    )
    assert r.returncode == 124, r.stderr
    pid = planted(box, pidfile)
    try:
        wait_for(lambda: not running(box, pid), 15, f"escapee {pid} to end")
    finally:
        box.run("kill", "-9", pid, check=False)


def test_a_setsid_escapee_ends_when_its_job_is_cancelled(box: Container, worker: str) -> None:
    pidfile = f"{SPOT}/escapee-cancel.pid"
    box.run("rm", "-f", pidfile)
    job = box.run("dts-client", "submit", "--shell", "--", escapee_script(pidfile)).stdout.strip()
    pid = planted(box, pidfile)
    try:
        assert running(box, pid)
        box.run("dts-client", "cancel", job)
        wait_for(
            lambda: (
                json.loads(box.run("dts-client", "--json", "status", job).stdout)["status"]
                == "cancelled"
            ),
            30,
            "the job to be cancelled",
        )
        wait_for(lambda: not running(box, pid), 15, f"escapee {pid} to end")
    finally:
        box.run("kill", "-9", pid, check=False)
