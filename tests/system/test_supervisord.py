"""The shipped supervisord programs (etc/supervisor/dts.conf) run by a real supervisord.

supervisord and supervisorctl come from the venv (PyPI's supervisor). The config is the shipped
file with the paths changed as `make run` changes them (dts.devrun.supervisor_config): the
programs from the venv, logs in a temporary directory, and the settings given as DTS_*
variables pointing at a private redis-server and a free port.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dts.devrun import SUPERVISOR_TEMPLATE, supervisor_config, worker_names
from tests.harness import BIN, RedisProcess, clean_env, free_port, pid_alive, run_cli, wait_until
from tests.web.browser import get

pytestmark = pytest.mark.single_store  # names its store itself: runs once


@dataclass
class Supervised:
    dir: Path
    conf: Path
    address: str
    names: list[str]
    proc: subprocess.Popen[bytes]

    def ctl(self, *args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "supervisorctl"), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env(),
        )

    def workers(self) -> dict[str, dict[str, Any]]:
        """`dts-client --json workers`, by name (none while the server is not up yet)."""
        r = run_cli(self.address, "--json", "workers")
        if r.returncode == 3:
            return {}
        assert r.returncode == 0, r.stderr
        return {w["name"]: w for w in json.loads(r.stdout)}

    def live(self) -> dict[str, dict[str, Any]]:
        return {n: w for n, w in self.workers().items() if w["state"] in ("idle", "busy")}


@pytest.fixture(scope="module")
def supervised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervised]:
    root = tmp_path_factory.mktemp("sv")  # short: the control socket's path is limited
    redis = RedisProcess(root)
    redis.start()
    log_dir = root / "log"
    log_dir.mkdir()
    address = f"127.0.0.1:{free_port()}"
    environment = {
        "DTS_REDIS_URL": redis.url,
        "DTS_DB": str(root / "dts.db"),
        "DTS_LISTEN": address,
        "DTS_SERVER": address,
        "DTS_WEB_LISTEN": f"127.0.0.1:{free_port()}",
    }
    text = supervisor_config(SUPERVISOR_TEMPLATE.read_text(), BIN, log_dir, root, environment)
    conf = root / "supervisord.conf"
    conf.write_text(text)
    with open(log_dir / "supervisord.out", "ab") as out:
        proc = subprocess.Popen(
            [str(BIN / "supervisord"), "-c", str(conf)],
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            start_new_session=True,
        )
    sv = Supervised(root, conf, address, worker_names(text), proc)
    try:
        # autostart=true: the server and the workers come up by themselves
        wait_until(lambda: set(sv.live()) == set(sv.names), 60, 0.2, what="the workers")
        yield sv
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # it stops the workers (draining), then the server
            try:
                proc.wait(150)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        redis.kill()


def test_the_config_defines_a_server_and_two_workers(supervised: Supervised) -> None:
    def status() -> dict[str, str]:
        lines = supervised.ctl("status").stdout.splitlines()
        return dict(line.split()[:2] for line in lines)

    expected = ["dts-server", "worker:worker_01", "worker:worker_02"]
    # RUNNING once up for startsecs (3 s); the dashboard is there, not started
    wanted = {**dict.fromkeys(expected, "RUNNING"), "dts-web": "STOPPED"}
    wait_until(lambda: status() == wanted, 15, 0.2)
    assert [n.rsplit("-", 1)[1] for n in supervised.names] == ["01", "02"]


def test_the_dashboard_starts_on_demand_and_stops_cleanly(supervised: Supervised) -> None:
    # When the dashboard program is started, then it serves, showing the server's workers
    r = supervised.ctl("start", "dts-web")
    assert "dts-web: started" in r.stdout, r.stdout + r.stderr
    listen = supervised.ctl("pid", "dts-web")  # running: it has a pid
    assert listen.stdout.strip().isdigit()
    text = (supervised.dir / "supervisord.conf").read_text()
    port = re.search(r"DTS_WEB_LISTEN=\"?127\.0\.0\.1:(\d+)", text)
    assert port, text
    url = f"http://127.0.0.1:{port.group(1)}"
    page = wait_until(lambda: get(f"{url}/workers"), 15, what="the dashboard")
    assert b"worker_" in page or b"<table" in page
    # And a stop is clean (exit 0: EXITED would say otherwise)
    r = supervised.ctl("stop", "dts-web")
    assert "dts-web: stopped" in r.stdout, r.stdout + r.stderr


def test_start_workers_gives_n_registered_workers(supervised: Supervised) -> None:
    # Given every worker stopped
    r = supervised.ctl("stop", "worker:*")
    assert r.returncode == 0, r.stdout + r.stderr
    assert supervised.live() == {}
    # When `supervisorctl start worker:*` returns
    started = time.time()
    r = supervised.ctl("start", "worker:*")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "worker:worker_01: started" in r.stdout and "worker:worker_02: started" in r.stdout
    # Then every one of them is registered (freshly, under its fixed name)
    live = supervised.live()
    assert set(live) == set(supervised.names)
    listed = run_cli(supervised.address, "workers")
    assert all(n in listed.stdout for n in supervised.names)
    for w in live.values():
        assert pid_alive(w["pid"])
        assert w["registered_at"] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started - 1))


def test_stop_workers_drains_running_jobs_and_leaves_no_process(
    supervised: Supervised, tmp_path: Path
) -> None:
    # Given both workers running, each job writes the pids of its shell and of a child
    r = supervised.ctl("start", "worker:*")
    assert set(supervised.live()) == set(supervised.names), r.stdout
    ids = []
    for _ in range(3):
        script = f"echo $$ >> {tmp_path}/job-$DTS_JOB_ID.pids; sleep 2 & "
        script += f"echo $! >> {tmp_path}/job-$DTS_JOB_ID.pids; wait; echo done"
        r = run_cli(supervised.address, "submit", "--shell", "--", script)
        assert r.returncode == 0, r.stderr
        ids.append(int(r.stdout))
    pidfiles = [tmp_path / f"job-{i}.pids" for i in ids]
    wait_until(
        lambda: all(p.exists() and len(p.read_text().split()) == 2 for p in pidfiles),
        20,
        what="the jobs to start",
    )
    # When `supervisorctl stop worker:*` returns
    started = time.monotonic()
    r = supervised.ctl("stop", "worker:*")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "worker:worker_01: stopped" in r.stdout and "worker:worker_02: stopped" in r.stdout
    assert time.monotonic() - started > 0.5  # it waited for the jobs
    # Then the running jobs were finished, not killed, and nothing of them is left
    for job_id in ids:
        r = run_cli(supervised.address, "--json", "status", str(job_id))
        job = json.loads(r.stdout)
        assert job["status"] == "succeeded", job
        out = run_cli(supervised.address, "logs", str(job_id))
        assert out.stdout == "done\n"
    for p in pidfiles:
        for pid in map(int, p.read_text().split()):
            assert not pid_alive(pid), f"job process {pid} outlived its worker"
    # And the server lists the workers as stopped, supervisord as STOPPED
    states = {n: w["state"] for n, w in supervised.workers().items() if n in supervised.names}
    assert states == dict.fromkeys(supervised.names, "stopped")
    assert supervised.ctl("status", "worker:*").stdout.count("STOPPED") == 2


def test_restart_of_one_worker_brings_it_back_under_the_same_name(
    supervised: Supervised,
) -> None:
    supervised.ctl("start", "worker:*")
    before = supervised.live()
    first = supervised.names[0]
    assert set(before) == set(supervised.names)
    # When `supervisorctl restart worker:worker_01` returns
    r = supervised.ctl("restart", "worker:worker_01")
    assert r.returncode == 0, r.stdout + r.stderr
    # Then a new process is registered under the same name, and no other name appeared
    after = supervised.live()
    assert set(after) == set(supervised.names)
    assert after[first]["pid"] != before[first]["pid"]
    assert not pid_alive(before[first]["pid"])
    assert after[supervised.names[1]]["pid"] == before[supervised.names[1]]["pid"]
    assert set(supervised.workers()) == set(supervised.names)
