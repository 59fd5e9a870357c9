"""A worker pool under Debian's supervisord (package supervisor), the server under systemd.

`make install SUPERVISOR=1` installs the [program:worker] section of etc/supervisor/dts.conf
as /etc/supervisor/conf.d/dts-worker.conf, running as user dts. Expected duration: ~30 s.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest

from tests.systemd.container import HOSTNAME, Container, wait_for

pytestmark = pytest.mark.timeout(600)

CONF = "/etc/supervisor/conf.d/dts-worker.conf"
ISO_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING) ")
# A worker that is not root and has no cgroup delegated to it (supervisord's user=dts) says so
# once, at start, and ends jobs by process group.
NO_CGROUPS = "WARNING dts.worker: jobs run without cgroups of their own"


def pool(box: Container) -> dict[str, dict[str, object]]:
    """The supervisord workers (HOST-NN) known to the server, by name."""
    ws = json.loads(box.run("dts-client", "--json", "workers").stdout)
    return {w["name"]: w for w in ws if re.fullmatch(rf"{HOSTNAME}-\d\d", w["name"])}


def live(box: Container) -> set[str]:
    return {n for n, w in pool(box).items() if w["state"] in ("idle", "busy")}


@pytest.fixture
def supervised(box: Container) -> Iterator[Container]:
    # no worker of another test may take this test's jobs
    box.run("systemctl", "stop", "dts-workers.target", "dts-worker@*", check=False)
    box.run("systemctl", "start", "dts-server")
    box.install("SUPERVISOR=1")
    try:
        yield box
    finally:  # the other tests of the tier must not meet these workers
        box.run("rm", "-f", CONF)
        box.run("supervisorctl", "update")


def test_worker_pool_under_supervisord(supervised: Container) -> None:
    box = supervised
    assert box.run("systemctl", "is-active", "supervisor").stdout.strip() == "active"
    names = {f"{HOSTNAME}-01", f"{HOSTNAME}-02"}
    # When supervisord takes the new config, then both workers register
    r = box.run("supervisorctl", "update")
    assert "worker: added process group" in r.stdout
    wait_for(lambda: live(box) == names, 30, "the supervised workers")
    everyone = json.loads(box.run("dts-client", "--json", "workers").stdout)
    assert {w["name"] for w in everyone if w["state"] in ("idle", "busy")} == names, everyone
    # As user dts, logging to /var/log/dts with their own time stamps: supervisord runs
    # under systemd and passes JOURNAL_STREAM on, but their stderr is its log file
    for w in pool(box).values():
        user = box.run("ps", "-o", "user=", "-p", str(w["pid"])).stdout.strip()
        assert user == "dts"
    sup_pid = box.show("supervisor", "MainPID")["MainPID"]
    assert "JOURNAL_STREAM=" in box.run("cat", f"/proc/{sup_pid}/environ").stdout
    log = box.run("cat", "/var/log/dts/worker_01.log").stdout.splitlines()
    assert log and all(ISO_LINE.match(line) for line in log), log
    assert [ln for ln in log if " WARNING " in ln] == [ln for ln in log if NO_CGROUPS in ln]
    assert len([ln for ln in log if NO_CGROUPS in ln]) == 1, log

    # Given a job that takes 2 s, running
    job = box.run(
        "dts-client", "submit", "--shell", "--", "echo $$ > /tmp/sv-job.pid; sleep 2; echo done"
    ).stdout.strip()
    wait_for(lambda: box.run("cat", "/tmp/sv-job.pid", check=False).stdout.strip(), 20, "job")
    # When `supervisorctl stop worker:*` returns, then the job finished and nothing is left
    started = time.monotonic()
    r = box.run("supervisorctl", "stop", "worker:*")
    assert time.monotonic() - started > 0.5
    assert "worker:worker_01: stopped" in r.stdout and "worker:worker_02: stopped" in r.stdout
    status = json.loads(box.run("dts-client", "--json", "status", job).stdout)
    logs = box.run("sh", "-c", "tail -n 30 /var/log/dts/worker_0*.log", check=False).stdout
    assert status["status"] == "succeeded", (status, logs)
    job_pid = box.run("cat", "/tmp/sv-job.pid").stdout.strip()
    assert box.run("kill", "-0", job_pid, check=False).returncode != 0
    assert not live(box)

    # When started again, then both are registered when `start` returns (startsecs)
    r = box.run("supervisorctl", "start", "worker:*")
    assert live(box) == names, r.stdout
    # And a restarted worker comes back under its name
    before = pool(box)[f"{HOSTNAME}-01"]["pid"]
    box.run("supervisorctl", "restart", "worker:worker_01")
    after = pool(box)
    assert after[f"{HOSTNAME}-01"]["state"] == "idle" and after[f"{HOSTNAME}-01"]["pid"] != before
    assert live(box) == names

    # When numprocs is raised, `supervisorctl update` restarts the group with a third one
    box.run("sed", "-i", "s/^numprocs=2$/numprocs=3/", CONF)
    box.run("supervisorctl", "update")
    wait_for(lambda: live(box) == {*names, f"{HOSTNAME}-03"}, 30, "a third worker")
    running = lambda: box.run("supervisorctl", "status", check=False).stdout.count("RUNNING")  # noqa: E731
    wait_for(lambda: running() == 3, 15, "three RUNNING (after startsecs)")
