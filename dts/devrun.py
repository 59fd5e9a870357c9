"""`make run`: a development cluster (Redis, dts-server, dts-workers under supervisord)."""

from __future__ import annotations

import argparse
import configparser
import contextlib
import ctypes
import functools
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TypeVar

import redis

from dts.client import Client
from dts.domain import Job, JobSpec, WorkerState
from dts.errors import DeadlineExceeded, DtsError
from dts.options import checkout_client_conf
from dts.queue.redis import connect, redacted_url

PROG = "devrun"
ROOT = Path(__file__).resolve().parent.parent
SUPERVISOR_TEMPLATE = ROOT / "etc" / "supervisor" / "dts.conf"
STARTUP_TIMEOUT = 30.0  # seconds for each startup step (Redis, server and workers, sample job)
SAMPLE_COMMAND = 'echo "hello from dts on $(hostname)"'
# Inherited DTS_* settings that would break running under supervisord (it needs the programs
# in the foreground and manages their logs itself).
UNSUPERVISABLE = ("DTS_DAEMON", "DTS_PIDFILE", "DTS_LOG_FILE", "DTS_NAME")
PR_SET_PDEATHSIG = 1

T = TypeVar("T")


class StartupError(Exception):
    """Bringing the cluster up failed; the message is the one line shown to the user."""


class Interrupted(Exception):
    """Ctrl+C or SIGTERM arrived while the cluster was coming up."""


class StopRequest:
    """SIGINT/SIGTERM as a counter the main flow polls (handlers do nothing else)."""

    def __init__(self) -> None:
        self.count = 0

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    @property
    def requested(self) -> bool:
        return self.count > 0

    def pause(self, seconds: float) -> None:
        """Sleep up to `seconds`, returning early once a stop is requested."""
        deadline = time.monotonic() + seconds
        while not self.requested and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))


def say(message: str) -> None:
    print(message, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def last_line(path: Path) -> str:
    """The last non-empty line of a log file (shortened), or '' when there is none."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if line.strip():
            text = line.strip()
            return text if len(text) <= 240 else text[:237] + "..."
    return ""


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if devrun dies without cleaning up (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    argv: Sequence[str], output: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a child in its own session (so a terminal's Ctrl+C reaches only devrun, which
    stops the children in order), with stdout and stderr appended to `output`."""
    with open(output, "ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            # Safe here: children are started before any gRPC channel (and its threads) exists.
            preexec_fn=_die_with_parent,
        )


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, wait up to `timeout` seconds, then SIGKILL; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def supervisor_value(text: str) -> str:
    """A string put into a supervisord config: its %(name)s expansion needs %% for '%'."""
    return text.replace("%", "%%")


def env_value(text: str) -> str:
    """A value for supervisord's environment=KEY="value",... list."""
    return '"' + supervisor_value(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def supervisor_config(
    template: str, bin_dir: Path, log_dir: Path, run_dir: Path, environment: dict[str, str]
) -> str:
    """etc/supervisor/dts.conf made runnable by an ordinary user: programs from `bin_dir`,
    logs in `log_dir`, supervisord's own files (socket, pid file, log) in `run_dir`, the
    programs' settings from `environment` (DTS_* variables), supervisord in the foreground."""
    text = template.replace("/usr/local/bin/", supervisor_value(shlex.quote(f"{bin_dir}/")))
    text = text.replace("/var/log/dts/", supervisor_value(f"{log_dir}/"))
    # Installs may switch user and directory; a development run stays as the caller, in the
    # run directory.
    text = re.sub(r"(?m)^(user|directory)\s*=.*$", r";\g<0>", text)
    sock = supervisor_value(str(run_dir / "supervisor.sock"))
    return (
        text
        + f"""
; ---- added by dts/devrun.py for `make run` ------------------------------------------------------

[unix_http_server]
file={sock}
chmod=0700

[supervisorctl]
serverurl=unix://{sock}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisord]
nodaemon=true
silent=true
logfile={supervisor_value(str(log_dir / "supervisord.log"))}
pidfile={supervisor_value(str(run_dir / "supervisord.pid"))}
childlogdir={supervisor_value(str(log_dir))}
environment={",".join(f"{k}={env_value(v)}" for k, v in environment.items())}
"""
    )


def worker_names(config: str, host: str | None = None) -> list[str]:
    """The names the config's [program:worker] processes register as (HOST-NN)."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read_string(config)
    first = int(parser.get("program:worker", "numprocs_start", fallback="0"))
    count = int(parser.get("program:worker", "numprocs", fallback="1"))
    host = host or platform.node()
    return [f"{host}-{n:02d}" for n in range(first, first + count)]


class DevCluster:
    """Redis (own or given), and supervisord running etc/supervisor/dts.conf from the venv."""

    def __init__(self, run_dir: Path, stop: StopRequest) -> None:
        self.dir = run_dir
        self.log_dir = run_dir / "log"
        self.stop = stop
        self.bin = Path(os.path.abspath(sys.executable)).parent  # the venv's bin, not resolved
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self.redis_url = ""
        self.supervisord: subprocess.Popen[bytes] | None = None
        self.conf = run_dir / "supervisord.conf"
        self.client_conf = run_dir / "client.conf"  # the address, for dts-client to find
        self.address = ""
        self.worker_names: list[str] = []

    # ---- startup ------------------------------------------------------------------------------

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        for name in ("dts-server", "dts-worker", "supervisord"):
            if not os.access(self.bin / name, os.X_OK):
                raise StartupError(f"{self.bin / name} not found: run `make build` first")
        self.redis_url = self._redis()
        self.address = f"127.0.0.1:{free_port()}"
        self._write_supervisor_config()
        self._start_supervisord()
        self._await_cluster()
        self._write_client_conf()

    def _write_client_conf(self) -> None:
        """Leave the server's address where `make run-client` (-c) and a plain dts-client of
        this checkout (its default config files) find it, until the cluster stops."""
        temp = self.client_conf.with_suffix(".tmp")
        temp.write_text(
            "# written by `make run` (python -m dts.devrun) for the cluster it runs;\n"
            "# removed when it stops\n"
            f"server = {self.address}\n"
        )
        temp.replace(self.client_conf)

    def _check_stop(self) -> None:
        if self.stop.requested:
            raise Interrupted

    def _poll(self, check: Callable[[], T | None], what: str, hint: Callable[[], str]) -> T:
        """Call `check` until it returns a value; StartupError (with `hint`) at the deadline."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            self._check_stop()
            value = check()
            if value is not None:
                return value
            if time.monotonic() >= deadline:
                detail = hint()
                raise StartupError(
                    f"{what} within {STARTUP_TIMEOUT:g}s" + (f": {detail}" if detail else "")
                )
            self.stop.pause(0.1)

    def _redis(self) -> str:
        url = os.environ.get("DTS_REDIS_URL", "")
        if url:
            safe = redacted_url(url)
            if _pings(url):
                say(f"redis: using {safe} (DTS_REDIS_URL)")
                return url
            say(f"redis: DTS_REDIS_URL={safe} does not answer PING; starting our own")
        exe = _which("redis-server") or "/usr/bin/redis-server"
        if not os.access(exe, os.X_OK):
            raise StartupError("redis-server not found (install it, or set DTS_REDIS_URL)")
        data = self.dir / "redis"
        data.mkdir(exist_ok=True)
        log = self.log_dir / "redis.log"
        for _ in range(3):  # a free port may be taken by someone else before redis binds it
            port = free_port()
            url = f"redis://127.0.0.1:{port}/0"
            argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no"]
            argv += ["--save", "", "--appendonly", "no", "--dir", str(data)]  # no persistence
            proc = self.redis_proc = spawn(argv, log, self.dir)
            if self._poll(
                functools.partial(_redis_state, proc, url),
                "redis-server did not answer",
                lambda: last_line(log),
            ):
                say(
                    f"redis: started redis-server on 127.0.0.1:{port} (pid {proc.pid}, "
                    f"no persistence, log {shown(log)})"
                )
                return url
            self.redis_proc = None
        raise StartupError(f"redis-server exited at start: {last_line(log)}")

    def _write_supervisor_config(self) -> None:
        try:
            template = SUPERVISOR_TEMPLATE.read_text()
        except OSError as e:
            raise StartupError(f"cannot read {SUPERVISOR_TEMPLATE}: {e}") from None
        environment = {
            "DTS_REDIS_URL": self.redis_url,
            "DTS_DB": str(self.dir / "dts.db"),
            "DTS_LISTEN": self.address,
            "DTS_SERVER": self.address,
        }
        text = supervisor_config(template, self.bin, self.log_dir, self.dir, environment)
        self.conf.write_text(text)
        self.worker_names = worker_names(text)

    def _start_supervisord(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in UNSUPERVISABLE}
        self.supervisord = spawn(
            [str(self.bin / "supervisord"), "-c", str(self.conf)],
            self.log_dir / "supervisord.out",
            self.dir,  # the programs' working directory, so jobs run in the run directory
            env,
        )
        say(f"supervisord: started (pid {self.supervisord.pid}, config {shown(self.conf)})")

    def _supervisord_gone(self) -> str:
        """'' while supervisord runs, else why it stopped."""
        assert self.supervisord is not None
        code = self.supervisord.poll()
        if code is None:
            return ""
        reason = last_line(self.log_dir / "supervisord.out") or last_line(
            self.log_dir / "supervisord.log"
        )
        return f"supervisord exited with status {code}" + (f": {reason}" if reason else "")

    def _await_cluster(self) -> None:
        server_log = self.log_dir / "server.log"
        started = time.time()
        with Client(self.address, timeout=1.0) as client:

            def serving() -> bool | None:
                if gone := self._supervisord_gone():
                    raise StartupError(gone)
                with contextlib.suppress(DtsError):
                    if client.health() == "SERVING":
                        return True
                return None

            self._poll(serving, "dts-server did not serve", lambda: last_line(server_log))
            say(f"dts-server: serving on {self.address} (db {shown(self.dir / 'dts.db')})")

            def registered() -> list[str] | None:
                if gone := self._supervisord_gone():
                    raise StartupError(gone)
                try:
                    workers = client.workers()
                except DtsError:
                    return None
                live = {
                    w.name
                    for w in workers
                    if w.state in (WorkerState.IDLE, WorkerState.BUSY)
                    and w.registered_at >= started - 1
                }
                names = [n for n in self.worker_names if n in live]
                return names if len(names) == len(self.worker_names) else None

            def missing() -> str:
                log = self.log_dir / f"worker_{self.worker_names[0].rsplit('-', 1)[1]}.log"
                return f"expected {', '.join(self.worker_names)}; {shown(log)}: {last_line(log)}"

            names = self._poll(registered, "the workers did not register", missing)
            say(f"dts-worker: {len(names)} registered ({', '.join(names)})")

    # ---- the sample job -----------------------------------------------------------------------

    def sample_job(self) -> None:
        with Client(self.address, timeout=5.0) as client:
            try:
                job = client.submit_one(JobSpec(argv=(SAMPLE_COMMAND,), shell=True))
            except DtsError as e:
                raise StartupError(f"cannot submit the sample job: {e}") from None
            say(f"sample job {job.id} submitted: {SAMPLE_COMMAND}")
            final = self._wait(client, job.id)
            try:
                out = client.logs(job.id)
            except DtsError as e:
                raise StartupError(f"cannot read the sample job's output: {e}") from None
        say(
            f"sample job {final.id}: {final.status}, exit code {final.exit_code}, "
            f"on {final.worker or '?'}"
        )
        for stream, data in (("stdout", out.stdout), ("stderr", out.stderr)):
            for line in data.decode(errors="replace").splitlines():
                say(f"  {stream}: {line}")

    def _wait(self, client: Client, job_id: int) -> Job:
        def final() -> Job | None:
            try:
                return client.wait(job_id, timeout=0.5)
            except DeadlineExceeded:
                return None
            except DtsError as e:
                raise StartupError(f"cannot wait for the sample job: {e}") from None

        return self._poll(final, f"sample job {job_id} did not finish", lambda: "")

    # ---- running and stopping -----------------------------------------------------------------

    def usage(self) -> None:
        client = shown(self.bin / "dts-client")
        if str(self.client_conf) not in checkout_client_conf():  # not found by default
            client += f" -c {shown(self.client_conf)}"
        make = f"make run-client RUN_DIR={shown(self.dir)}" if self.dir != ROOT / ".run" else ""
        ctl = f"{shown(self.bin / 'supervisorctl')} -c {shown(self.conf)}"
        say(
            "\n"
            f"dts is running: server {self.address}, workers {', '.join(self.worker_names)},"
            f" redis {self.redis_url}\n"
            f"use it from another terminal (the address is in {shown(self.client_conf)}):\n"
            f"  {make or 'make run-client'} CMD='uname -a'\n"
            f"  {client} workers\n"
            f"  {client} submit --wait --shell -- 'uname -a'\n"
            f"  {client} list\n"
            f"  {ctl} status\n"
            f"logs: {shown(self.log_dir)}/\n"
            "Ctrl+C stops everything."
        )

    def watch(self) -> int:
        """Until a stop is requested: 0; or 1 when supervisord died on its own."""
        while not self.stop.requested:
            if gone := self._supervisord_gone():
                sys.stderr.write(f"{PROG}: error: {gone}\n")
                return 1
            self.stop.pause(0.5)
        return 0

    def teardown(self) -> None:
        """Stop supervisord (its programs drain first), then our own Redis. Idempotent."""
        self.client_conf.unlink(missing_ok=True)  # no client should find a stopping cluster
        sup, self.supervisord = self.supervisord, None
        if sup is not None and sup.poll() is None:
            say("stopping: supervisord stops the workers (they drain) and then the server ...")
            seen = self.stop.count
            sup.send_signal(signal.SIGTERM)
            # supervisord itself SIGKILLs a program after its stopwaitsecs (90 s for workers,
            # 30 s for the server); this deadline only guards against supervisord hanging.
            deadline = time.monotonic() + 150
            while sup.poll() is None and time.monotonic() < deadline:
                if self.stop.count != seen:
                    seen = self.stop.count
                    say("still stopping: running jobs may take up to 60 s to drain")
                with contextlib.suppress(subprocess.TimeoutExpired):
                    sup.wait(0.2)
            if sup.poll() is None:
                say(f"{PROG}: supervisord did not stop in time; killing it")
                sup.kill()
                sup.wait()
            say(f"supervisord: stopped (status {sup.returncode})")
        elif sup is not None:
            sup.wait()
        proc, self.redis_proc = self.redis_proc, None
        if proc is not None:
            code = stop_process(proc, 10.0)
            say(f"redis: stopped our redis-server (status {code})")


def _redis_state(proc: subprocess.Popen[bytes], url: str) -> bool | None:
    """True once our redis-server answers, False when it exited, None while it starts."""
    if proc.poll() is not None:
        return False
    return True if _pings(url) else None


def _pings(url: str) -> bool:
    try:
        client = connect(url)  # a redis+sentinel:// URL too
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, ValueError, OSError, DtsError):
        return False


def _which(name: str) -> str | None:
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(folder or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dts.devrun", description=__doc__)
    parser.add_argument("--dir", default=".run", help="run directory: config, db, logs, sockets")
    args = parser.parse_args(argv)
    stop = StopRequest()
    stop.install()
    cluster = DevCluster(Path(args.dir).resolve(), stop)
    error = ""
    code = 0
    try:
        cluster.start()
        cluster.sample_job()
        cluster.usage()
        code = cluster.watch()
    except Interrupted:
        say("interrupted during startup")
    except StartupError as e:
        error = str(e)
    except Exception as e:  # anything unforeseen: still tear down, still one line
        error = f"{type(e).__name__}: {e}"
    finally:
        cluster.teardown()
    if error:  # last, after the teardown's lines, so that it is what the user sees
        sys.stderr.write(f"{PROG}: error: {error}\n")
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
