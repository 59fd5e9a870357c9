"""The shipped systemd units, installed by `make install` and driven by a real systemd.

Expected duration: ~40 s after the first run (which builds the root file system, ~60 s more).
"""

from __future__ import annotations

import json
import time

import pytest

from tests.systemd.container import HOSTNAME, Container, wait_for

pytestmark = pytest.mark.timeout(600)

UNITS = ("dts-server.service", "dts-worker@.service", "dts-workers.target", "dts-web.service")


def workers(box: Container) -> dict[str, str]:
    """Worker name -> state, from `dts-client --json workers` inside the container."""
    r = box.run("dts-client", "--json", "workers")
    return {w["name"]: w["state"] for w in json.loads(r.stdout)}


def live_workers(box: Container) -> set[str]:
    return {n for n, s in workers(box).items() if s in ("idle", "busy")}


def journal(box: Container, *args: str) -> list[dict[str, str]]:
    """Entries of `journalctl -o json` (this boot), with the given filters."""
    r = box.run("journalctl", "-b", "--no-pager", "-o", "json", *args)
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def messages(box: Container, *args: str) -> list[str]:
    return [str(e.get("MESSAGE", "")) for e in journal(box, *args)]


def start_all(box: Container) -> None:
    box.run("systemctl", "start", "dts-server", "dts-worker@1", "dts-worker@2")


def test_every_unit_passes_systemd_analyze_verify(box: Container) -> None:
    paths = [f"/etc/systemd/system/{u}" for u in UNITS]
    r = box.run("systemd-analyze", "verify", *paths, check=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = box.run("systemd-analyze", "verify", "dts-worker@7.service", check=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_make_install_lays_out_the_system(box: Container) -> None:
    for prog in ("dts-server", "dts-worker", "dts-client", "dts-web"):
        assert (
            box.run("readlink", f"/usr/local/bin/{prog}").stdout.strip() == f"/opt/dts/bin/{prog}"
        )
    for unit in UNITS:
        box.run("test", "-f", f"/etc/systemd/system/{unit}")
    for conf in ("server.conf", "worker.conf", "client.conf", "web.conf"):
        box.run("test", "-f", f"/etc/dts/{conf}")
    r = box.run("stat", "-c", "%n %U %G %a", "/var/lib/dts", "/var/lib/dts-worker", "/var/log/dts")
    assert r.stdout.split("\n")[:3] == [
        "/var/lib/dts dts dts 750",
        "/var/lib/dts-worker dts dts 755",
        "/var/log/dts dts dts 755",
    ]
    assert box.run("getent", "passwd", "dts").stdout.split(":")[6].strip() == "/usr/sbin/nologin"


def test_the_dashboard_unit_serves_on_loopback_and_stops_cleanly(box: Container) -> None:
    box.run("systemctl", "start", "dts-server", "dts-web")
    fetch = (
        "import urllib.request as u; "
        "print(u.urlopen('http://127.0.0.1:8080/healthz', timeout=2).read().decode(), end='')"
    )
    wait_for(
        lambda: box.run("/opt/dts/bin/python", "-c", fetch, check=False).stdout == "ok\n",
        20,
        "dts-web to answer",
    )
    assert box.show("dts-web", "User")["User"] == "dts"
    box.run("systemctl", "stop", "dts-web")
    props = box.show("dts-web", "Result", "ExecMainStatus")
    assert props == {"Result": "success", "ExecMainStatus": "0"}


def test_server_is_active_and_serving_as_soon_as_start_returns(box: Container) -> None:
    box.run("systemctl", "stop", "dts-server")
    # `systemctl start` waits for READY=1 (Type=notify): no polling needed after it
    r = box.sh("systemctl start dts-server && systemctl is-active dts-server && dts-client ping")
    assert r.stdout.split() == ["active", "SERVING"]
    props = box.show("dts-server", "Type", "StatusText", "User", "NotifyAccess")
    assert props["Type"] == "notify"
    assert props["StatusText"] == "listening on 127.0.0.1:50051"  # sent with READY=1
    assert props["User"] == "dts"
    # the database is in the unit's StateDirectory, owned by the service user
    owner = box.run("stat", "-c", "%U", "/var/lib/dts/dts.db").stdout.strip()
    assert owner == "dts"


def test_two_worker_instances_register_and_run_a_job(box: Container) -> None:
    box.run("systemctl", "start", "dts-server")
    box.run("systemctl", "stop", "dts-worker@1", "dts-worker@2")
    # When the two instances are started, then both are registered when start returns
    box.run("systemctl", "start", "dts-worker@1", "dts-worker@2")
    assert {f"{HOSTNAME}-1", f"{HOSTNAME}-2"} <= live_workers(box)
    assert box.show("dts-worker@1", "StatusText")["StatusText"] == f"registered as {HOSTNAME}-1"
    # And a job submitted inside the container runs, as dts, in the workers' directory
    r = box.run("dts-client", "submit", "--wait", "--shell", "--", 'echo "$(id -un) $(pwd) $HOME"')
    assert r.stdout == "dts /var/lib/dts-worker /var/lib/dts-worker\n"


def test_server_lines_reach_the_journal_with_their_priorities(box: Container) -> None:
    start_all(box)
    # Given an error: Redis goes away while a job is submitted
    box.run("systemctl", "stop", "redis-server")
    try:
        box.run("dts-client", "submit", "--", "true")
        wait_for(
            lambda: any("redis unavailable" in m for m in messages(box, "-u", "dts-server")),
            20,
            "the error in the journal",
        )
    finally:
        box.run("systemctl", "start", "redis-server")
    entries = [e for e in journal(box, "-u", "dts-server") if e.get("_COMM") == "dts-server"]
    by_priority: dict[str, list[str]] = {}
    for e in entries:
        by_priority.setdefault(e["PRIORITY"], []).append(e["MESSAGE"])
    assert any("listening on" in m for m in by_priority["6"])
    assert any("redis unavailable" in m for m in by_priority["3"])
    # No time stamp of our own (journald has one); the <N> prefix was taken off
    assert all(m.startswith(("INFO ", "WARNING ", "ERROR ")) for m in by_priority["6"][:3])
    assert not any(m.startswith("<") for e in entries for m in [e["MESSAGE"]])
    # And journalctl's priority filter tells them apart
    errors = "\n".join(messages(box, "-u", "dts-server", "-p", "err"))
    infos = "\n".join(messages(box, "-u", "dts-server", "-p", "info"))
    assert "redis unavailable" in errors and "listening on" not in errors
    assert "redis unavailable" in infos and "listening on" in infos


def test_reload_keeps_the_server_and_applies_the_log_level(box: Container) -> None:
    box.run("systemctl", "start", "dts-server")
    pid = box.show("dts-server", "MainPID")["MainPID"]
    # When reloaded as is, then it runs on (same pid) and says so
    box.run("systemctl", "reload", "dts-server")
    wait_for(
        lambda: any("reload: log files reopened" in m for m in messages(box, "-u", "dts-server")),
        10,
        "the reload in the journal",
    )
    # When server.conf sets another level and it is reloaded, then the level applies
    box.run("cp", "/etc/dts/server.conf", "/root/server.conf")
    box.sh("echo 'log-level = warning' >> /etc/dts/server.conf")
    try:
        box.run("systemctl", "reload", "dts-server")
        wait_for(
            lambda: any("info -> warning" in m for m in messages(box, "-u", "dts-server")),
            10,
            "the level change in the journal",
        )
        job = box.run("dts-client", "submit", "--queue", "quiet", "--", "true").stdout.strip()
        time.sleep(0.5)
        assert not any(f"job {job} queued" in m for m in messages(box, "-u", "dts-server"))
    finally:
        box.run("cp", "/root/server.conf", "/etc/dts/server.conf")
        box.run("systemctl", "reload", "dts-server")
        box.run("dts-client", "cancel", job, check=False)
    props = box.show("dts-server", "MainPID", "ActiveState")
    assert props == {"MainPID": pid, "ActiveState": "active"}


def test_stop_drains_the_workers_and_stops_the_server_cleanly(box: Container) -> None:
    start_all(box)
    # Given a job that takes 3 s, running
    job = box.run(
        "dts-client", "submit", "--shell", "--", "echo $$ > job.pid; sleep 3; echo done"
    ).stdout.strip()
    wait_for(
        lambda: (
            json.loads(box.run("dts-client", "--json", "status", job).stdout)["status"] == "running"
        ),
        20,
        "the job to run",
    )
    # When the workers are stopped, then `systemctl stop` returns once they drained
    started = time.monotonic()
    box.run("systemctl", "stop", "dts-worker@1", "dts-worker@2")
    assert time.monotonic() - started > 1
    status = json.loads(box.run("dts-client", "--json", "status", job).stdout)
    assert status["status"] == "succeeded"
    assert box.run("dts-client", "logs", job).stdout == "done\n"
    job_pid = box.run("cat", "/var/lib/dts-worker/job.pid").stdout.strip()
    assert box.run("kill", "-0", job_pid, check=False).returncode != 0
    for unit in ("dts-worker@1", "dts-worker@2"):
        props = box.show(unit, "ExecMainStatus", "Result", "ActiveState")
        assert props == {"ExecMainStatus": "0", "Result": "success", "ActiveState": "inactive"}
    assert workers(box)[f"{HOSTNAME}-1"] == "stopped"
    # And the server stops with status 0 too
    box.run("systemctl", "stop", "dts-server")
    props = box.show("dts-server", "ExecMainStatus", "Result", "ActiveState")
    assert props == {"ExecMainStatus": "0", "Result": "success", "ActiveState": "inactive"}
    assert any("dts-server stopped" in m for m in messages(box, "-u", "dts-server"))


def test_a_killed_server_is_restarted(box: Container) -> None:
    box.run("systemctl", "start", "dts-server")
    before = box.show("dts-server", "MainPID", "NRestarts")
    # When the server is SIGKILLed, then Restart=on-failure brings up a new one.
    # (--kill-who=main: the server has no other processes, and systemd 252 in a container
    # sometimes fails the cgroup-wide kill with EIO after the main process died.)
    box.run("systemctl", "kill", "--kill-who=main", "-s", "KILL", "dts-server")

    def restarted() -> bool:
        now = box.show("dts-server", "MainPID", "NRestarts", "ActiveState")
        return (
            now["ActiveState"] == "active"
            and now["MainPID"] not in ("0", before["MainPID"])
            and int(now["NRestarts"]) == int(before["NRestarts"]) + 1
        )

    wait_for(restarted, 20, "a new MainPID")
    assert box.run("dts-client", "ping").stdout == "SERVING\n"


def test_enabled_worker_instances_act_as_one_target(box: Container) -> None:
    box.run("systemctl", "enable", "--now", "dts-server")
    names = {f"{HOSTNAME}-{n}" for n in range(1, 5)}

    def all_registered() -> bool:
        return names <= live_workers(box)

    try:
        # The commands of the README's Deploying section
        box.sh("systemctl enable --now dts-worker@{1..4}")
        assert all_registered()  # each start returned once its instance was registered
        listed = box.run("dts-client", "workers").stdout
        assert all(f"{n} " in listed for n in names)
        deps = box.run("systemctl", "list-dependencies", "--plain", "dts-workers.target").stdout
        assert all(f"dts-worker@{n}.service" in deps for n in range(1, 5))
        # stopping the target returns once every instance drained and exited
        job = box.run("dts-client", "submit", "--shell", "--", "sleep 2; echo done").stdout
        wait_for(lambda: any(s == "busy" for s in workers(box).values()), 20, "a busy worker")
        box.run("systemctl", "stop", "dts-workers.target")
        assert not names & live_workers(box)
        assert box.run("dts-client", "logs", job.strip()).stdout == "done\n"
        # starting it starts every enabled instance (it does not wait for them)
        box.run("systemctl", "start", "dts-workers.target")
        wait_for(all_registered, 30, "the enabled instances")
        pids = {n: box.show(f"dts-worker@{n}", "MainPID")["MainPID"] for n in range(1, 5)}
        box.run("systemctl", "restart", "dts-workers.target")
        wait_for(all_registered, 30, "the restarted instances")
        assert all(box.show(f"dts-worker@{n}", "MainPID")["MainPID"] != pids[n] for n in pids)
        box.run("systemctl", "disable", "--now", "dts-worker@4")
        assert live_workers(box) & names == names - {f"{HOSTNAME}-4"}
        assert box.run("systemctl", "is-enabled", "dts-server").stdout.strip() == "enabled"
        lines = box.run("journalctl", "-b", "--no-pager", "-u", "dts-worker@*").stdout
        assert f"worker {HOSTNAME}-3 registered" in lines
    finally:
        box.sh("systemctl disable --now dts-worker@{1..4}")
