"""The cluster of the cluster tier, on hosts made of network namespaces (tests/cluster/netns.py):

    db      10.254.77.10  PostgreSQL (initdb/pg_ctl, as user postgres) on 5432; Redis, a master
                          and its replica on 6379 and 6380; three sentinels on 26379-26381
    s1..s3  10.254.77.11-13  dts-server on 50051, all on the one PostgreSQL database
    w1, w2  10.254.77.21-22  dts-worker, given every server and the sentinels
    client  10.254.77.30  the agent (tests/cluster/agent.py): the test's hands in the network

Every program is addressed by its host's IP. The test process stays in the root namespace and
reaches the cluster only through the agent; it starts and kills the programs itself (by pid),
and cuts and restores links at the switch.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from tests.harness import BIN, clean_env, wait_until
from tests.postgres import _has_user, _pg_bin

from .netns import SUBNET, Host, HostProc, Network

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]

SERVICE = "dts"  # the sentinels' name of the Redis master
REDIS_PORTS = (6379, 6380)
SENTINEL_PORTS = (26379, 26380, 26381)
PG_PORT = 5432
DTS_PORT = 50051
LEASE = 10.0  # --worker-timeout: a worker fences its jobs after 8 s without a renewal
CONCURRENCY = 4  # jobs each worker runs at once
DRAIN = 5.0  # a worker's --drain-timeout: seconds its jobs may take to end when it is stopped
LEADS = "this server now leads"


class AgentError(Exception):
    """The agent's op raised (the message is its exception's), or the agent did not answer."""


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """wait_until, where an agent's error (a server or Redis not answering yet) is a no."""
    last: list[AgentError] = []

    def attempt() -> T | None:
        try:
            return check()
        except AgentError as e:
            last[:] = [e]
            return None

    try:
        return wait_until(attempt, timeout, interval, what)  # type: ignore[return-value]
    except AssertionError as e:
        raise AssertionError(f"{e}; the agent said last: {last[0] if last else None}") from None


def logged_at(line: str) -> float:
    """The time.time() of a dts log line (`2026-11-27T00:00:00.123Z LEVEL ...`)."""
    return datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()


class Agent:
    """The agent process on the client host, and calls to it (one at a time)."""

    def __init__(self, host: Host, log: Path) -> None:
        self.host = host
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                host.argv(sys.executable, "-m", "tests.cluster.agent"),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=REPO,
                env=clean_env(),
                start_new_session=True,
            )
        self._buf = b""
        self._n = 0
        self._lock = threading.Lock()

    def call(self, op: str, timeout: float = 30.0, **args: Any) -> Any:
        with self._lock:
            self._n += 1
            assert self.proc.stdin is not None
            try:
                line = json.dumps({"id": self._n, "op": op, "args": args}) + "\n"
                self.proc.stdin.write(line.encode())
                self.proc.stdin.flush()
            except OSError as e:
                raise AgentError(f"the agent is gone: {e}") from None
            deadline = time.monotonic() + timeout
            while True:
                reply = json.loads(self._readline(deadline, op))
                if reply.get("id") == self._n:  # (a late answer to a call timed out: skipped)
                    break
        if not reply["ok"]:
            raise AgentError(f"{op}: {reply['error']}")
        return reply["value"]

    def _readline(self, deadline: float, op: str) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AgentError(f"{op}: no answer from the agent in time")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise AgentError(f"{op}: the agent exited ({self.proc.poll()})")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


class Postgres:
    """A throwaway PostgreSQL cluster on the db host, run as user postgres (or nobody)."""

    def __init__(self, host: Host, root: Path) -> None:
        self.host = host
        self.dir = root / "pg"
        self.dir.mkdir()
        self.user = "postgres" if _has_user("postgres") else "nobody"
        entry = pwd.getpwnam(self.user)
        os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self.url = f"postgresql://postgres@{host.ip}:{PG_PORT}/postgres"

    def _run(self, *argv: str, timeout: float = 120) -> None:
        self.host.run("runuser", "-u", self.user, "--", *argv, timeout=timeout)

    def init(self) -> None:
        initdb = _pg_bin("initdb")
        assert initdb is not None
        data = str(self.dir / "data")
        self._run(initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        with open(self.dir / "data" / "pg_hba.conf", "a") as hba:  # the servers' hosts
            hba.write(f"host all all {SUBNET}.0/24 trust\n")

    def start(self) -> None:
        """pg_ctl start -w: returns once it accepts connections."""
        options = (
            f"-c listen_addresses={self.host.ip} -p {PG_PORT} -k {self.dir} -c fsync=off"
            " -c max_connections=200"
        )
        self._run(
            str(_pg_bin("pg_ctl")), "-D", str(self.dir / "data"), "-o", options,
            "-l", str(self.dir / "postgres.log"), "-w", "-t", "60", "start",
        )  # fmt: skip

    def halt(self, mode: str) -> None:
        """pg_ctl stop -m `mode` (fast: sessions ended; immediate: as a crash)."""
        self._run(str(_pg_bin("pg_ctl")), "-D", str(self.dir / "data"), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        r = self.host.run(
            "runuser", "-u", self.user, "--", str(_pg_bin("pg_ctl")), "-D",
            str(self.dir / "data"), "status", check=False,
        )  # fmt: skip
        return r.returncode == 0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.running():
                self.halt("immediate")


class Redis(HostProc):
    """redis-server on the db host: a master, or a replica of `master` (a port there)."""

    def __init__(self, host: Host, root: Path, port: int, master: int | None = None) -> None:
        self.port = port
        d = root / f"redis-{port}"
        d.mkdir(exist_ok=True)
        argv = [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port", str(port), "--bind", host.ip, "--protected-mode", "no",
            "--save", "", "--appendonly", "no", "--dir", str(d),
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if master is not None:
            argv += ["--replicaof", host.ip, str(master)]
        super().__init__(host, argv, root / f"redis-{port}.log")


class Sentinel(HostProc):
    """A sentinel on the db host watching SERVICE: down after 1 s of silence, quorum 2."""

    def __init__(self, host: Host, root: Path, port: int, master: int) -> None:
        self.port = port
        conf = root / f"sentinel-{port}.conf"
        conf.write_text(
            "\n".join(
                [
                    f"port {port}",
                    f"bind {host.ip}",
                    "protected-mode no",
                    f"dir {root}",
                    f"sentinel monitor {SERVICE} {host.ip} {master} 2",
                    f"sentinel down-after-milliseconds {SERVICE} 1000",
                    f"sentinel failover-timeout {SERVICE} 3000",
                    f"sentinel parallel-syncs {SERVICE} 1",
                    "",
                ]
            )
        )
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        super().__init__(host, [exe, str(conf), "--sentinel"], root / f"sentinel-{port}.log")


class Daemon(HostProc):
    """A dts-server or dts-worker; `fresh()` is its log since this process started."""

    def __init__(self, host: Host, argv: list[str], log: Path) -> None:
        super().__init__(host, argv, log, env=clean_env())
        self.since = 0

    def start(self) -> None:
        self.since = self.log_path.stat().st_size if self.log_path.exists() else 0
        super().start()

    def fresh(self) -> str:
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self.since)
            return f.read().decode(errors="replace")


class Cluster:
    """The hosts and programs of the tier, started by `start()` and all gone after `close()`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.net = Network()
        try:
            self.db = self.net.add_host("db", 10)
            self.server_hosts = {f"s{i}": self.net.add_host(f"s{i}", 10 + i) for i in (1, 2, 3)}
            self.worker_hosts = {f"w{i}": self.net.add_host(f"w{i}", 20 + i) for i in (1, 2)}
            self.client = self.net.add_host("client", 30)
            self.agent = Agent(self.client, root / "agent.log")
        except BaseException:
            self.net.close()
            raise
        self.pg = Postgres(self.db, root)
        self.redis: dict[int, Redis] = {}
        self.sentinels: list[Sentinel] = []
        self.servers: dict[str, Daemon] = {}
        self.workers: dict[str, Daemon] = {}

    # ---- addresses -------------------------------------------------------------------------

    def address(self, server: str) -> str:
        return f"{self.server_hosts[server].ip}:{DTS_PORT}"

    @property
    def addresses(self) -> list[str]:
        """Every server, s1 first: what the workers and clients are given."""
        return [self.address(s) for s in self.server_hosts]

    def server_of(self, address: str) -> str:
        return next(s for s in self.server_hosts if self.address(s) == address)

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [(self.db.ip, p) for p in SENTINEL_PORTS]

    @property
    def redis_url(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinel_addresses)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    # ---- start and stop --------------------------------------------------------------------

    def start(self) -> None:
        wait_for(lambda: self.agent.call("ping") == "pong", 30, "the agent to answer")
        self.pg.init()
        self.pg.start()
        self.start_redis(REDIS_PORTS[0])
        self.start_redis(REDIS_PORTS[1], master=REDIS_PORTS[0])
        for port in SENTINEL_PORTS:
            s = Sentinel(self.db, self.root, port, REDIS_PORTS[0])
            self.sentinels.append(s)
            s.start()
        self.wait_redis_steady(30)
        for name in self.server_hosts:
            self.start_server(name)
        for name in self.worker_hosts:
            self.start_worker(name)

    def close(self) -> None:
        """Everything down: the programs (each by its pid, then whatever is left on the hosts),
        PostgreSQL, the namespaces. The workers stop first, cleanly: they end their jobs and
        remove their cgroups."""
        for w in self.workers.values():
            w.stop(timeout=DRAIN + 10)
        for s in self.servers.values():
            s.kill()
        self.agent.close()
        for r in [*self.sentinels, *self.redis.values()]:
            r.kill()
        self.pg.close()
        self.net.close()

    # ---- dts -------------------------------------------------------------------------------

    def start_server(self, name: str) -> Daemon:
        host = self.server_hosts[name]
        s = Daemon(
            host,
            [
                str(BIN / "dts-server"),
                "--listen", self.address(name),
                "--redis-url", self.redis_url,
                "--db", self.pg.url,
                "--worker-timeout", f"{LEASE:g}",
            ],
            self.root / f"server-{name}.log",
        )  # fmt: skip
        self.servers[name] = s
        s.start()
        self.wait_serving(name, 30)
        return s

    def wait_serving(self, name: str, timeout: float) -> None:
        address, s = self.address(name), self.servers[name]

        def serving() -> bool:
            assert s.alive(), f"dts-server {name} died: {s.fresh()[-3000:]}"
            return bool(self.agent.call("health", addresses=[address])[address] == "SERVING")

        wait_for(serving, timeout, f"dts-server {name} to serve", 0.2)

    def kill_server(self, name: str) -> float:
        """SIGKILL; returns when it was sent (time.time())."""
        s = self.servers[name]
        at = time.time()
        s.signal(signal.SIGKILL)
        s.wait(30)
        return at

    def stop_server(self, name: str) -> int:
        """SIGTERM, waiting for it to exit; its exit status."""
        code = self.servers[name].stop(timeout=30)
        assert code is not None
        return code

    def start_worker(self, name: str) -> Daemon:
        w = Daemon(
            self.worker_hosts[name],
            [
                str(BIN / "dts-worker"),
                "--server", ",".join(self.addresses),
                "--redis-url", self.redis_url,
                "--name", name,
                "--concurrency", str(CONCURRENCY),
                "--kill-grace", "1",
                "--drain-timeout", f"{DRAIN:g}",
            ],
            self.root / f"worker-{name}.log",
        )  # fmt: skip
        self.workers[name] = w
        w.start()
        registered = f"worker {name} registered"
        wait_until(
            lambda: registered in w.fresh() or not w.alive(), 30, what=f"worker {name} to register"
        )
        assert w.alive(), w.fresh()[-3000:]
        return w

    def talks_to(self, proc: Daemon) -> str:
        """The server a worker's calls go to now: the last it moved to, else the first."""
        moves = re.findall(r"now talking to server (\S+)", proc.fresh())
        return self.server_of(moves[-1] if moves else self.addresses[0])

    def leader(self) -> str | None:
        """The server that took the lead last, if it is alive."""
        last: tuple[float, str] | None = None
        for name, s in self.servers.items():
            for line in s.fresh().splitlines():
                if LEADS in line and (last is None or logged_at(line) > last[0]):
                    last = (logged_at(line), name)
        return last[1] if last and self.servers[last[1]].alive() else None

    def claims_after(self, worker: str, at: float) -> list[float]:
        """When worker `worker` started jobs after `at` (its log lines; time.time())."""
        out = []
        for line in self.workers[worker].fresh().splitlines():
            if re.search(r" job \d+ attempt \d+ started", line):
                t = logged_at(line)
                if t >= at:
                    out.append(t)
        return out

    # ---- redis -----------------------------------------------------------------------------

    def start_redis(self, port: int, master: int | None = None) -> None:
        r = Redis(self.db, self.root, port, master)
        self.redis[port] = r
        r.start()
        wait_for(
            lambda: self.agent.call("redis", host=self.db.ip, port=port, args=["PING"]),
            15,
            f"redis on {port}",
        )

    def sentinels_say(self) -> list[dict[str, Any] | str]:
        return list(
            self.agent.call("sentinels", sentinels=self.sentinel_addresses, service=SERVICE)
        )

    def master(self) -> int | None:
        """The master's port, when every sentinel names the same one."""
        said = self.sentinels_say()
        ports = {int(s["port"]) if isinstance(s, dict) else -1 for s in said}
        return ports.pop() if len(ports) == 1 and -1 not in ports else None

    def redis_steady(self) -> bool:
        """Every sentinel names the same master, which is up, knows the two other sentinels
        and a replica; and that replica, alive, is in sync with it."""
        said = self.sentinels_say()
        if not all(isinstance(s, dict) for s in said):
            return False
        states = [s for s in said if isinstance(s, dict)]
        master = {int(s["port"]) for s in states}
        if len(master) != 1:
            return False
        (port,) = master
        if not all(
            s["flags"] == "master"
            and int(s["num-other-sentinels"]) == 2
            and int(s["num-slaves"]) >= 1
            for s in states
        ):
            return False
        (other,) = [p for p in REDIS_PORTS if p != port]
        if not (self.redis[port].alive() and self.redis[other].alive()):
            return False
        info = self.agent.call("replication", host=self.db.ip, port=other)
        return bool(
            info.get("role") == "slave"
            and int(info.get("master_port", 0)) == port
            and info.get("master_link_status") == "up"
        )

    def wait_redis_steady(self, timeout: float) -> None:
        wait_for(self.redis_steady, timeout, "the sentinels and the replica to settle", 0.2)

    # ---- the whole -------------------------------------------------------------------------

    def steady(self) -> None:
        """Bring back whatever a test left down (links, servers, workers, Redis, PostgreSQL),
        and wait until all of it works."""
        for host in self.net.hosts.values():
            if host.cut_at is not None:
                host.restore()
        if not self.pg.running():
            self.pg.start()
        master = wait_for(self.master, 30, "the sentinels to agree on a master")
        for port in REDIS_PORTS:
            if not self.redis[port].alive():
                self.start_redis(port, master=master)
        self.wait_redis_steady(60)
        for name, s in self.servers.items():
            if not s.alive():
                self.start_server(name)
            self.wait_serving(name, 30)
        for name, w in self.workers.items():
            if not w.alive():
                self.start_worker(name)
        states = wait_for(
            lambda: all(
                v in ("idle", "busy")
                for k, v in self.agent.call("workers", servers=self.addresses).items()
                if k in self.workers
            ),
            30,
            "the workers to be registered",
        )
        assert states

    def logs(self) -> dict[str, str]:
        """Every log of the run, by file name (for a failing test's report)."""
        out = {}
        for p in [*sorted(self.root.glob("*.log")), self.pg.dir / "postgres.log"]:
            with contextlib.suppress(OSError):
                out[p.name] = p.read_text(errors="replace")
        return out
