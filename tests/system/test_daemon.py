"""dts-server and dts-worker as daemons: --daemon, --pidfile, --log-file, signals, health.

Each test runs the installed commands as an init script or an operator would, and checks what
they can see: exit codes, one-line errors, the PID file, the log file and the gRPC health check.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dts.client import Client
from dts.domain import JobSpec
from tests.harness import (
    BIN,
    ServerProcess,
    WorkerProcess,
    clean_env,
    free_port,
    kill_quietly,
    pid_alive,
    run_cli,
    wait_until,
)

pytestmark = pytest.mark.single_store  # names its store itself: runs once

LAUNCH_TIMEOUT = 40.0  # the launcher itself gives up after 30 s


class Daemons:
    """Launches daemons and kills whatever is left of them at the end of a test."""

    def __init__(self, root: Path, redis_url: str) -> None:
        self.root = root
        self.redis_url = redis_url
        self.pids: set[int] = set()

    def server_args(self, port: int, db: Path | None = None) -> list[str]:
        return [
            str(BIN / "dts-server"),
            "--listen",
            f"127.0.0.1:{port}",
            "--redis-url",
            self.redis_url,
            "--db",
            str(db or self.root / f"dts-{port}.db"),
        ]

    def worker_args(self, server: str, name: str) -> list[str]:
        return [
            str(BIN / "dts-worker"),
            "--server",
            server,
            "--redis-url",
            self.redis_url,
            "--name",
            name,
            "--concurrency",
            "1",
        ]

    def launch(self, argv: list[str], *extra: str) -> subprocess.CompletedProcess[str]:
        """Run a launching command (with --daemon in `extra`) to its end."""
        r = subprocess.run(
            [*argv, *extra],
            capture_output=True,
            text=True,
            timeout=LAUNCH_TIMEOUT,
            env=clean_env(),
            cwd=self.root,
            stdin=subprocess.DEVNULL,
        )
        return r

    def adopt(self, pidfile: Path) -> int:
        pid = int(pidfile.read_text())
        self.pids.add(pid)
        return pid

    def cleanup(self) -> None:
        for pid in self.pids:
            kill_quietly(pid)


@pytest.fixture
def daemons(tmp_path: Path, redis_url: str) -> Iterator[Daemons]:
    d = Daemons(tmp_path, redis_url)
    yield d
    d.cleanup()


def _daemon_flags(pidfile: Path, log: Path) -> tuple[str, ...]:
    return ("--daemon", "--pidfile", str(pidfile), "--log-file", str(log))


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _health(address: str, service: str = "") -> str:
    """The standard grpc.health.v1 check, with a bare stub (no dts code)."""
    with grpc.insecure_channel(address) as channel:
        resp = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def _wait_gone(pid: int, timeout: float = 20.0) -> None:
    wait_until(lambda: not pid_alive(pid), timeout, 0.05, what=f"pid {pid} to exit")


def _start_server(d: Daemons, tmp_path: Path, *extra: str) -> tuple[str, int, Path, Path]:
    port = free_port()
    pidfile, log = tmp_path / "server.pid", tmp_path / "server.log"
    r = d.launch(d.server_args(port), *_daemon_flags(pidfile, log), *extra)
    assert r.returncode == 0, r.stderr
    return f"127.0.0.1:{port}", d.adopt(pidfile), pidfile, log


# ---- server -------------------------------------------------------------------------------------


def test_server_daemon_serves_as_soon_as_the_launch_returns(
    daemons: Daemons, tmp_path: Path
) -> None:
    # When dts-server --daemon returns 0
    address, pid, pidfile, log = _start_server(daemons, tmp_path)
    # Then it serves at once: the standard health check (overall and per service) and ping
    assert _health(address) == "SERVING"
    assert _health(address, "dts.v1.Scheduler") == "SERVING"
    assert _health(address, "dts.v1.WorkerService") == "SERVING"
    ping = run_cli(address, "ping")
    assert (ping.returncode, ping.stdout.strip()) == (0, "SERVING")
    # And the pid file holds the detached daemon's pid, a dts-server in another session
    assert pidfile.read_text() == f"{pid}\n"
    assert "dts-server" in _cmdline(pid)
    assert os.getsid(pid) != os.getsid(0)  # detached from our session
    assert "listening on" in log.read_text()

    # When it gets SIGTERM, then it exits and removes its pid file; ping now fails
    os.kill(pid, signal.SIGTERM)
    _wait_gone(pid)
    assert not pidfile.exists()
    assert "dts-server stopped" in log.read_text()
    ping = run_cli(address, "--rpc-timeout", "2", "ping")
    assert ping.returncode == 3, ping
    assert ping.stderr.count("\n") == 1 and address in ping.stderr


@pytest.mark.parametrize("mode", ["daemon", "foreground"])
def test_second_server_with_the_same_pidfile_refuses_naming_the_pid(
    daemons: Daemons, tmp_path: Path, mode: str
) -> None:
    # Given a running daemon
    address, pid, pidfile, _ = _start_server(daemons, tmp_path)
    # When a second one is started with the same pid file (on another port)
    argv = daemons.server_args(free_port(), tmp_path / "other.db")
    extra = ["--pidfile", str(pidfile)]
    if mode == "daemon":
        extra += ["--daemon", "--log-file", str(tmp_path / "other.log")]
    started = time.monotonic()
    r = daemons.launch(argv, *extra)
    # Then it refuses at once, in one line naming the running pid, with a non-zero exit
    assert r.returncode != 0
    assert time.monotonic() - started < 10
    assert r.stderr.count("\n") == 1, r.stderr
    assert f"already running as pid {pid}" in r.stderr
    assert r.stdout == ""
    # And the first one is untouched
    assert pidfile.read_text() == f"{pid}\n"
    assert _health(address) == "SERVING"


def test_a_second_server_on_the_same_sqlite_file_refuses_naming_postgresql(
    daemons: Daemons, tmp_path: Path
) -> None:
    # Given a running server on a SQLite file
    port = free_port()
    db = tmp_path / "shared.db"
    pidfile, log = tmp_path / "server.pid", tmp_path / "server.log"
    r = daemons.launch(daemons.server_args(port, db), *_daemon_flags(pidfile, log))
    assert r.returncode == 0, r.stderr
    pid = daemons.adopt(pidfile)
    # When a second server is started on the same file (another port, no pid file)
    second = daemons.launch(daemons.server_args(free_port(), db))
    # Then it refuses in one line naming the holder and what to use for several servers
    assert second.returncode != 0
    assert second.stderr.count("\n") == 1, second.stderr
    assert f"database {db} is in use by another process (pid {pid})" in second.stderr
    assert "give several servers a PostgreSQL store" in second.stderr
    # And the first serves on; once it has stopped, the file opens again
    assert _health(f"127.0.0.1:{port}") == "SERVING"
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not pid_alive(pid), 20, what="the first server to stop")
    third = ServerProcess(tmp_path, daemons.redis_url, db=db)
    third.start()
    third.stop()


@pytest.mark.parametrize("content", ["dead pid", "garbage", "empty"])
def test_stale_pid_file_is_replaced(daemons: Daemons, tmp_path: Path, content: str) -> None:
    # Given a pid file left by a process that died (or holding garbage)
    pidfile, log = tmp_path / "server.pid", tmp_path / "server.log"
    if content == "dead pid":
        dead = subprocess.Popen(["true"])
        dead.wait()
        pidfile.write_text(f"{dead.pid}\n")
    else:
        pidfile.write_text("" if content == "empty" else "not a pid\n")
    # When a daemon starts with it, then it starts promptly and the file holds its pid
    started = time.monotonic()
    r = daemons.launch(daemons.server_args(free_port()), *_daemon_flags(pidfile, log))
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - started < 10
    pid = daemons.adopt(pidfile)
    assert pid_alive(pid) and "dts-server" in _cmdline(pid)
    if content != "empty":
        assert "replaced stale pid file" in log.read_text()


@pytest.mark.parametrize("why", ["port in use", "bad db path"])
def test_daemon_that_cannot_start_fails_the_launch_with_the_reason(
    daemons: Daemons, tmp_path: Path, why: str
) -> None:
    pidfile, log = tmp_path / "server.pid", tmp_path / "server.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        db = tmp_path / "dts.db"
        if why == "port in use":
            expected = "Address already in use"
        else:
            port = free_port()
            (tmp_path / "a-file").write_text("")
            db = tmp_path / "a-file" / "dts.db"
            expected = "cannot open database"
        started = time.monotonic()
        r = daemons.launch(daemons.server_args(port, db), *_daemon_flags(pidfile, log))
    assert r.returncode == 1
    assert time.monotonic() - started < 10
    assert r.stderr.startswith("dts-server: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert expected in r.stderr
    assert not pidfile.exists()
    assert expected in log.read_text()


def test_sighup_reopens_a_renamed_log_file(daemons: Daemons, tmp_path: Path) -> None:
    # Given a daemon whose log file was moved away (as logrotate does)
    address, pid, _, log = _start_server(daemons, tmp_path)
    rotated = log.with_name(log.name + ".1")
    log.rename(rotated)
    # When it gets SIGHUP
    os.kill(pid, signal.SIGHUP)
    # Then it writes to a new file at the old name, and keeps running and serving
    wait_until(lambda: log.exists() and "log files reopened" in log.read_text(), 10)
    with Client(address) as c:
        job = c.submit_one(_spec("after the reopen"))
    wait_until(lambda: f"job {job.id} queued" in log.read_text(), 10)
    assert f"job {job.id}" not in rotated.read_text()
    assert pid_alive(pid) and _health(address) == "SERVING"


def test_sighup_applies_a_changed_log_level_from_the_config_file(
    daemons: Daemons, tmp_path: Path
) -> None:
    # Given a daemon whose log level comes from its config file
    conf = tmp_path / "server.conf"
    conf.write_text("log-level = info\n")
    address, pid, _, log = _start_server(daemons, tmp_path, "-c", str(conf))
    with Client(address) as c:
        first = c.submit_one(_spec("logged"))
        wait_until(lambda: f"job {first.id} queued" in log.read_text(), 10)
        # When the file says warning and the daemon gets SIGHUP
        conf.write_text("log-level = warning\n")
        os.kill(pid, signal.SIGHUP)
        # Then the change is logged, and info lines stop
        wait_until(lambda: "log level info -> warning" in log.read_text(), 10)
        quiet = c.submit_one(_spec("not logged"))
        # When it is set back to debug, then info lines come again
        conf.write_text("log-level = debug\n")
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: "log level warning -> debug" in log.read_text(), 10)
        loud = c.submit_one(_spec("logged again"))
        wait_until(lambda: f"job {loud.id} queued" in log.read_text(), 10)
    assert f"job {quiet.id} queued" not in log.read_text()
    assert pid_alive(pid)


def test_a_config_error_on_reload_keeps_the_daemon_running(
    daemons: Daemons, tmp_path: Path
) -> None:
    conf = tmp_path / "server.conf"
    conf.write_text("log-level = info\n")
    address, pid, _, log = _start_server(daemons, tmp_path, "-c", str(conf))
    conf.write_text("log-level = loud\n")
    os.kill(pid, signal.SIGHUP)
    wait_until(lambda: "config not reloaded" in log.read_text(), 10)
    assert pid_alive(pid) and _health(address) == "SERVING"


def test_server_in_the_foreground_with_a_pidfile(redis_url: str, tmp_path: Path) -> None:
    # Given a foreground server with a pid file
    pidfile = tmp_path / "fg.pid"
    s = ServerProcess(tmp_path, redis_url, "--pidfile", str(pidfile))
    s.start()
    try:
        # Then the file holds its own pid (no fork)
        assert pidfile.read_text() == f"{s.pid}\n"
        # And a second foreground server with that pid file refuses, naming it
        other = ServerProcess(tmp_path, redis_url, "--pidfile", str(pidfile))
        r = subprocess.run(other.argv, capture_output=True, text=True, timeout=30, env=clean_env())
        assert r.returncode == 1
        assert r.stderr.count("\n") == 1 and f"already running as pid {s.pid}" in r.stderr
        # When it gets SIGTERM, then it exits 0 and removes the file
        s.signal(signal.SIGTERM)
        assert s.wait(20) == 0
        assert not pidfile.exists()
    finally:
        s.kill()


@pytest.mark.parametrize("mode", ["daemon", "foreground"])
def test_server_files_are_private_under_a_umask_of_022(
    daemons: Daemons, redis_url: str, tmp_path: Path, mode: str
) -> None:
    # Given the umask most shells have, which leaves new files readable by everyone
    old = os.umask(0o022)
    try:
        # When a server starts (and has its WAL open: -wal and -shm exist while it runs)
        if mode == "daemon":
            address, _, pidfile, log = _start_server(daemons, tmp_path)
            db = tmp_path / f"dts-{address.rpartition(':')[2]}.db"
        else:
            s = ServerProcess(tmp_path, redis_url)
            s.start()
            db = s.db
    finally:
        os.umask(old)
    try:
        # Then the database and its WAL files are the server user's alone
        files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
        modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in files}
        assert modes == {f.name: 0o600 for f in files}
        # And a daemon (umask 027) makes no file other users can read
        if mode == "daemon":
            for made in (log, pidfile):
                assert stat.S_IMODE(made.stat().st_mode) & 0o007 == 0, made
        assert "open to other users" not in (log if mode == "daemon" else s.log_path).read_text()
    finally:
        if mode == "foreground":
            s.stop()


def test_two_sigterms_stop_the_server_at_once(daemons: Daemons, tmp_path: Path) -> None:
    # Given a server with a client blocked in `submit --wait` on a job no worker takes
    address, pid, pidfile, log = _start_server(daemons, tmp_path)
    waiting = _wait_for_a_job_that_never_runs(address, log)
    try:
        # When it gets SIGTERM twice in a row, then it is gone within seconds, cleanly
        started = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGTERM)
        _wait_gone(pid, 10)
        assert time.monotonic() - started < 5
        assert not pidfile.exists()
        assert "dts-server stopped" in log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        waiting.kill()
        waiting.wait()


def test_one_sigterm_does_not_wait_for_long_polling_clients(
    daemons: Daemons, tmp_path: Path
) -> None:
    # Given a server with a client blocked in `submit --wait` on a job no worker takes
    address, pid, _, log = _start_server(daemons, tmp_path)
    waiting = _wait_for_a_job_that_never_runs(address, log)
    try:
        # When the server gets one SIGTERM, then it stops promptly, without errors
        started = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        _wait_gone(pid, 15)
        assert time.monotonic() - started < 5
        assert "dts-server stopped" in log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        waiting.kill()
        waiting.wait()


def _wait_for_a_job_that_never_runs(address: str, log: Path) -> subprocess.Popen[bytes]:
    argv = [str(BIN / "dts-client"), "--server", address, "submit", "--wait"]
    proc = subprocess.Popen(
        [*argv, "--queue", "nowhere", "--", "true"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_env(),
    )
    wait_until(lambda: "queued" in log.read_text(), 10, what="the job to be queued")
    time.sleep(0.3)  # into the WaitJob long poll
    return proc


# ---- worker -------------------------------------------------------------------------------------


@pytest.fixture
def server(redis_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path, redis_url)
    s.start()
    yield s
    s.stop()


def _start_worker(
    d: Daemons, server: ServerProcess, tmp_path: Path, name: str, *extra: str
) -> tuple[int, Path, Path]:
    pidfile, log = tmp_path / f"{name}.pid", tmp_path / f"{name}.log"
    r = d.launch(d.worker_args(server.address, name), *_daemon_flags(pidfile, log), *extra)
    assert r.returncode == 0, r.stderr
    return d.adopt(pidfile), pidfile, log


def _state(server: ServerProcess, name: str) -> str:
    with Client(server.address) as c:
        return next((w.state.value for w in c.workers() if w.name == name), "")


def test_worker_daemon_is_registered_when_the_launch_returns(
    daemons: Daemons, server: ServerProcess, tmp_path: Path
) -> None:
    pid, pidfile, log = _start_worker(daemons, server, tmp_path, "wd1")
    # Then it is registered already, and the pid file names the detached daemon
    assert _state(server, "wd1") == "idle"
    assert pidfile.read_text() == f"{pid}\n"
    assert "dts-worker" in _cmdline(pid) and os.getsid(pid) != os.getsid(0)
    listed = run_cli(server.address, "workers")
    assert listed.returncode == 0 and "wd1" in listed.stdout
    # And a second worker with the same pid file refuses, in one line naming the pid
    r = daemons.launch(
        daemons.worker_args(server.address, "wd2"), *_daemon_flags(pidfile, tmp_path / "x.log")
    )
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and f"already running as pid {pid}" in r.stderr
    assert _state(server, "wd2") == ""
    # When the daemon gets SIGTERM, then it unregisters, exits and removes its pid file
    os.kill(pid, signal.SIGTERM)
    _wait_gone(pid)
    assert not pidfile.exists()
    assert _state(server, "wd1") == "stopped"
    assert "worker wd1 stopped" in log.read_text()


def test_worker_daemon_sighup_reopens_its_log_and_applies_the_level(
    daemons: Daemons, server: ServerProcess, tmp_path: Path
) -> None:
    conf = tmp_path / "worker.conf"
    conf.write_text("log-level = info\n")
    pid, _, log = _start_worker(daemons, server, tmp_path, "wh", "-c", str(conf))
    rotated = log.with_name(log.name + ".1")
    log.rename(rotated)
    conf.write_text("log-level = warning\n")
    os.kill(pid, signal.SIGHUP)
    wait_until(lambda: log.exists() and "log level info -> warning" in log.read_text(), 10)
    # Then info lines (a job starting) are no longer logged, and the worker still works
    r = run_cli(server.address, "submit", "--wait", "--", "true")
    assert r.returncode == 0, r.stderr
    assert "started" not in log.read_text()
    assert pid_alive(pid) and _state(server, "wh") == "idle"


def test_worker_daemon_waits_for_the_server_then_fails_the_launch_if_stopped(
    daemons: Daemons, tmp_path: Path
) -> None:
    # Given no server: the daemon keeps retrying, so the launch is still waiting
    pidfile, log = tmp_path / "w.pid", tmp_path / "w.log"
    argv = [*daemons.worker_args(f"127.0.0.1:{free_port()}", "early"), "--log-level", "debug"]
    launch = subprocess.Popen(
        [*argv, *_daemon_flags(pidfile, log)],
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 10)
    pid = daemons.adopt(pidfile)
    time.sleep(0.5)
    assert launch.poll() is None
    # When the daemon is stopped before it could register
    os.kill(pid, signal.SIGTERM)
    # Then the launch fails with that reason, and the pid file is gone
    _, err = launch.communicate(timeout=20)
    assert launch.returncode == 1
    assert err == "dts-worker: error: stopped before registering\n"
    _wait_gone(pid)
    assert not pidfile.exists()


def test_second_sigterm_stops_a_draining_worker_at_once(
    server: ServerProcess, redis_url: str, tmp_path: Path
) -> None:
    # Given a worker running a long job, with a long drain timeout
    pidfile = tmp_path / "w.pid"
    w = WorkerProcess(
        tmp_path,
        server.address,
        redis_url,
        "slowpoke",
        "--drain-timeout",
        "60",
        "--kill-grace",
        "1",
        "--pidfile",
        str(pidfile),
    )
    w.start()
    try:
        marker = tmp_path / "job.pid"
        r = run_cli(server.address, "submit", "--shell", "--", f"echo $$ > {marker}; exec sleep 60")
        job_id = int(r.stdout)
        wait_until(lambda: marker.exists() and marker.read_text().strip(), 20)
        job_pid = int(marker.read_text())
        # When it gets SIGTERM, then it drains: still running a second later
        w.signal(signal.SIGTERM)
        time.sleep(1)
        assert w.alive() and pid_alive(job_pid)
        # When a second SIGTERM comes, then it stops the job and exits at once
        started = time.monotonic()
        w.signal(signal.SIGTERM)
        assert w.wait(15) == 0
        assert time.monotonic() - started < 6
        assert not pid_alive(job_pid) and not pidfile.exists()
        with Client(server.address) as c:
            assert c.get(job_id).status.value == "queued"  # released, to run again
            c.cancel(job_id)
    finally:
        w.kill()


def _spec(name: str, queue: str = "default") -> JobSpec:
    return JobSpec(argv=("true",), name=name, queue=queue)
