"""Real processes for the tests: redis-server, dts-server, dts-worker and the dts-client CLI."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import redis

from dts.channel import ChannelSecurity
from dts.client import Client
from dts.errors import DtsError

BIN = Path(sys.executable).parent
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], T], timeout: float = 15.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except (DtsError, redis.RedisError, OSError) as e:
            value, last = None, e
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check}: last {last!r}")


STARTED: list[Proc] = []  # every process the tests started, so none outlives the session


@atexit.register
def _kill_leftovers() -> None:
    """A test that failed before stopping its processes must not leave them running (no
    PR_SET_PDEATHSIG here to take them down with pytest)."""
    for p in STARTED:
        p.kill()


class Proc:
    """A child process with its output in a log file."""

    def __init__(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.log_path = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        STARTED.append(self)
        log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class RedisProcess(Proc):
    """A private redis-server on a free loopback port, without persistence.

    `extra` adds redis-server options (later ones win, so `--port 0 --tls-port P` makes it
    TLS only); `url` is how dts and the tests reach it (default: plain, no password).
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        extra: Sequence[str] = (),
        url: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.dir = workdir
        self._url = url
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        super().__init__(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                *extra,
            ],
            workdir / f"redis-{self.port}.log",
        )

    @property
    def url(self) -> str:
        return self._url or f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> None:
        super().start()
        try:
            wait_until(lambda: self.client().ping(), 10, what=f"redis on {self.port}")
        except AssertionError:
            self.kill()
            raise


def sqlite_file(workdir: Path) -> Path | str:
    return workdir / "dts.db"


#: Where a ServerProcess not given a db keeps its history, by its directory: a SQLite file there,
#: unless the tests' `dts_store` fixture switched to a PostgreSQL database per directory.
default_db: Callable[[Path], Path | str] = sqlite_file


class ServerProcess(Proc):
    """A dts-server with its own store (the db given, else `default_db` of its directory)."""

    def __init__(
        self,
        workdir: Path,
        redis_url: str,
        *extra: str,
        port: int | None = None,
        db: Path | str | None = None,
        prefix: str = "dts:",
        probe: ChannelSecurity | None = None,
    ) -> None:
        self.port = port or free_port()
        self.probe = probe  # how start() reaches the server to see it serving
        self.db = db or default_db(workdir)
        self.address = f"127.0.0.1:{self.port}"
        super().__init__(
            [
                str(BIN / "dts-server"),
                "--listen",
                self.address,
                "--redis-url",
                redis_url,
                "--db",
                str(self.db),
                "--key-prefix",
                prefix,
                *extra,
            ],
            workdir / f"server-{self.port}.log",
            env=clean_env(),
        )

    def start(self) -> None:
        super().start()
        with Client(self.address, timeout=2, security=self.probe) as c:
            wait_until(
                lambda: not self.alive() or c.health() == "SERVING",
                20,
                what="dts-server to serve",
            )
        assert self.alive(), self.output()


class WorkerProcess(Proc):
    """A dts-worker."""

    def __init__(
        self,
        workdir: Path,
        server: str,
        redis_url: str,
        name: str,
        *extra: str,
        probe: ChannelSecurity | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.server = server
        self.probe = probe  # how wait_registered() reaches the server
        super().__init__(
            [
                str(BIN / "dts-worker"),
                "--server",
                server,
                "--redis-url",
                redis_url,
                "--name",
                name,
                *extra,
            ],
            workdir / f"worker-{name}.log",
            env=env or clean_env(),
        )

    def start(self, wait: bool = True) -> None:
        super().start()
        if wait:
            self.wait_registered()

    def wait_registered(self, timeout: float = 20.0) -> None:
        with Client(self.server, timeout=2, security=self.probe) as c:
            wait_until(
                lambda: (
                    any(
                        w.name == self.name and w.state.value in ("idle", "busy")
                        for w in c.workers()
                    )
                    or not self.alive()
                ),
                timeout,
                what=f"worker {self.name} to register",
            )
        assert self.alive(), self.output()


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without DTS_* settings that could leak in from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTS_")}
    env.update(extra)
    return env


def run_cli(
    server: str,
    *args: str,
    input: bytes | str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run dts-client as a user would; text output."""
    data = input.decode() if isinstance(input, bytes) else input
    return subprocess.run(
        [str(BIN / "dts-client"), "--server", server, *args],
        input=data,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else clean_env(),
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(FileNotFoundError):
        # a zombie is as good as dead
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return False


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class SentinelProcess(Proc):
    """A Redis Sentinel (`redis-server CONF --sentinel`) on a free loopback port, watching the
    master of `service` at 127.0.0.1:`master_port` with a quick failure detector: down after
    `down_after_ms` of silence, quorum `quorum`, failovers bounded by `failover_timeout_ms`.
    Its config file (which Sentinel rewrites as it learns) lives in `workdir`."""

    def __init__(
        self,
        workdir: Path,
        master_port: int,
        service: str = "dts",
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        tls: tuple[str, str, str] | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.port = free_port()
        self.service = service
        self.tls = tls  # (certificate, key, CA): TLS only, to clients and to the Redis nodes
        self.conf = workdir / f"sentinel-{self.port}.conf"
        ports = [f"port {self.port}"]
        if tls:
            ports = ["port 0", f"tls-port {self.port}", "tls-replication yes"]
            ports += ["tls-auth-clients no", f"tls-cert-file {tls[0]}", f"tls-key-file {tls[1]}"]
            ports += [f"tls-ca-cert-file {tls[2]}"]
        self.conf.write_text(
            "\n".join(
                [
                    *ports,
                    "bind 127.0.0.1",
                    f"dir {workdir}",
                    f"sentinel monitor {service} 127.0.0.1 {master_port} {quorum}",
                    f"sentinel down-after-milliseconds {service} {down_after_ms}",
                    f"sentinel failover-timeout {service} {failover_timeout_ms}",
                    f"sentinel parallel-syncs {service} 1",
                    *extra,
                    "",
                ]
            )
        )
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        super().__init__([exe, str(self.conf), "--sentinel"], workdir / f"sentinel-{self.port}.log")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        tls: dict[str, Any] = {"ssl": True, "ssl_ca_certs": self.tls[2]} if self.tls else {}
        return redis.Redis("127.0.0.1", self.port, socket_timeout=5, decode_responses=True, **tls)

    def master(self) -> dict[str, Any]:
        """What this sentinel knows of its service's master (SENTINEL MASTER)."""
        state: dict[str, Any] = self.client().sentinel_master(self.service)
        return state

    def start(self) -> None:
        super().start()
        try:
            wait_until(lambda: self.client().ping(), 10, what=f"sentinel on {self.port}")
        except AssertionError:
            self.kill()
            raise
