"""Fault-injection fixtures: a restartable cluster whose jobs write a ledger, and its checker.

The ledger and the checker that judges a run by it are in tests/chaos/ledger.py. A cluster keeps
its history in SQLite (a file of its own) or in PostgreSQL: `chaos(store="postgres")` gives it
a fresh database on the run's shared PostgreSQL, `chaos(db=url)` the database at `url` (that of
the `pg` fixture's own cluster, for a test that stops and starts PostgreSQL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from dts.client import Client
from dts.domain import JobSpec
from tests import postgres
from tests.chaos.ledger import Entry, Ledger, Verdict, check
from tests.harness import (
    Proc,
    RedisProcess,
    ServerProcess,
    WorkerProcess,
    free_port,
    wait_until,
)
from tests.tcpproxy import TcpProxy

NOT_FINAL = ("scheduled", "queued", "running")


# ---- processes ----------------------------------------------------------------------------------


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in process group `pgid`."""
    with os.scandir("/proc") as entries:
        pids = [e.name for e in entries if e.name.isdigit()]
    for pid in pids:
        try:
            stat = Path("/proc", pid, "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def log_count(proc: Proc, text: str) -> int:
    return proc.output().count(text)


class ChaosCluster:
    """Redis, a dts-server and workers that can each be killed and started again in place.

    Redis and the server keep their ports (and the server its --db) across restarts; a worker
    restarted under its name appends to the same log. `close()` takes everything down, frozen
    workers included, and kills any job process the ledger knows that is still alive.

    `db` is the server's --db: a PostgreSQL URL, or (by default) the SQLite file root/dts.db.
    """

    def __init__(
        self,
        root: Path,
        *server_args: str,
        lease: float = 2.0,
        max_lost: int = 3,
        db: str | None = None,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.lease = lease
        self.server_args = (
            "--worker-timeout",
            f"{lease:g}",
            "--max-lost",
            str(max_lost),
            *server_args,
        )
        self.redis_port = free_port()
        self.server_port = free_port()
        self.db: Path | str = db or root / "dts.db"
        self.ledger = Ledger(root / "ledger.txt")
        self.redis: RedisProcess | None = None
        self.server: ServerProcess | None = None
        self.workers: dict[str, WorkerProcess] = {}
        self.proxies: list[TcpProxy] = []
        self._procs: list[Proc] = []
        self._client: Client | None = None

    # ---- addresses and the client -----------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.address, timeout=5)
        return self._client

    # ---- redis and server -------------------------------------------------------------------

    def start(self) -> ChaosCluster:
        self.start_redis()
        self.start_server()
        return self

    def start_redis(self) -> None:
        """A redis-server on the cluster's port, empty (no persistence)."""
        r = RedisProcess(self.root, port=self.redis_port)
        self._procs.append(r)
        r.start()
        self.redis = r

    def kill_redis(self) -> None:
        if self.redis is not None:
            self.redis.kill()

    def start_server(self) -> float:
        """Start dts-server (same port, same --db); returns how long it took to serve."""
        t0 = time.monotonic()
        s = ServerProcess(
            self.root, self.redis_url, *self.server_args, port=self.server_port, db=self.db
        )
        self._procs.append(s)
        s.start()
        self.server = s
        return time.monotonic() - t0

    def kill_server(self) -> None:
        if self.server is not None:
            self.server.kill()

    def server_log(self) -> str:
        return self.server.output() if self.server is not None else ""

    # ---- workers ----------------------------------------------------------------------------

    def add_worker(
        self,
        name: str,
        *extra: str,
        concurrency: int = 1,
        server: str | None = None,
        wait: bool = True,
    ) -> WorkerProcess:
        """Start a worker (again, under the same name, if it ran before)."""
        w = WorkerProcess(
            self.root,
            server or self.address,
            self.redis_url,
            name,
            "--concurrency",
            str(concurrency),
            "--kill-grace",
            "1",
            *extra,
        )
        self._launch(name, w, wait)
        if wait:
            assert w.alive(), w.output()[-3000:]
        return w

    def _launch(self, name: str, w: WorkerProcess, wait: bool) -> None:
        """Start a worker (new or in place of a dead one); wait for its new registration."""
        before = log_count(w, f"worker {name} registered")
        self._procs.append(w)
        w.start(wait=False)
        self.workers[name] = w
        if wait:
            wait_until(
                lambda: log_count(w, f"worker {name} registered") > before or not w.alive(),
                30,
                what=f"worker {name} to register",
            )

    def restart_worker(self, name: str, wait: bool = True) -> WorkerProcess:
        old = self.workers[name]
        assert not old.alive(), f"worker {name} is still running"
        extra = old.argv[old.argv.index("--name") + 2 :]
        w = WorkerProcess(self.root, old.server, self.redis_url, name, *extra)
        self._launch(name, w, wait)
        return w

    def proxy(self, target_port: int | None = None) -> TcpProxy:
        p = TcpProxy(target_port or self.server_port).start()
        self.proxies.append(p)
        return p

    # ---- jobs -------------------------------------------------------------------------------

    def specs(self, commands: Sequence[str], **spec: object) -> list[JobSpec]:
        """Shell jobs of `commands`, with the ledger's environment."""
        env = (*self.ledger.env, *spec.pop("env", ()))  # type: ignore[misc]
        return [JobSpec(argv=(c,), shell=True, env=env, **spec) for c in commands]  # type: ignore[arg-type]

    def submit(self, commands: Sequence[str], **spec: object) -> list[int]:
        return [j.id for j in self.client.submit(self.specs(commands, **spec))]

    def counts(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for s in self.client.stats():
            out[s.status.value] += s.count
        return dict(out)

    def wait_drained(self, timeout: float) -> dict[str, int]:
        """Wait until no job is scheduled, queued or running; returns the status counts."""

        def drained() -> dict[str, int] | None:
            counts = self.counts()
            if any(counts.get(s) for s in NOT_FINAL):
                return None
            return counts or {"no jobs": 0}  # truthy: done

        counts = wait_until(drained, timeout, interval=0.25, what="the queue to drain")
        assert counts is not None
        return counts

    def wait_started(self, job_id: int, attempt: int = 1, timeout: float = 20) -> Entry:
        entry = wait_until(
            lambda: self.ledger.start_of(job_id, attempt),
            timeout,
            what=f"job {job_id} attempt {attempt} to start",
        )
        assert entry is not None
        return entry

    def check(self, submitted: Iterable[int], expect_failed: Iterable[int] = ()) -> Verdict:
        v = check(self.client, self.ledger, submitted, expect_failed)
        print(f"\n{v}")
        return v

    @property
    def postgres(self) -> bool:
        """Whether the server keeps its history in PostgreSQL (else in SQLite)."""
        return str(self.db).startswith(("postgresql://", "postgres://"))

    def db_job(self, job_id: int) -> dict[str, object]:
        """The job's row straight from the server's store (SQLite read-only, or PostgreSQL),
        for what the API does not show: the failure and loss counters and the lease deadline."""
        columns = "status, attempts, failures, lost, worker, lease_expires_at"
        if self.postgres:
            with psycopg.connect(str(self.db), connect_timeout=5, row_factory=dict_row) as pg:
                found = pg.execute(
                    f"SELECT {columns} FROM jobs WHERE id = %s", (job_id,)
                ).fetchone()
            assert found is not None, f"no job {job_id} in {self.db}"
            return dict(found)
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        conn.row_factory = sqlite3.Row
        try:
            row = conn.execute(f"SELECT {columns} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        finally:
            conn.close()
        return dict(row)

    # ---- teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        workers = [p for p in self._procs if isinstance(p, WorkerProcess)]
        for w in workers:  # a frozen worker cannot die of SIGKILL until it runs again
            w.signal(signal.SIGCONT)
        for w in workers:
            w.kill()
        for proxy in self.proxies:
            proxy.close()
        for proc in self._procs:
            if isinstance(proc, ServerProcess):
                proc.stop(timeout=5)
        for proc in self._procs:
            if isinstance(proc, RedisProcess):
                proc.kill()
        if self._client is not None:
            self._client.close()
        self._kill_leftover_jobs()

    def _kill_leftover_jobs(self) -> None:
        """The guards kill a dead worker's jobs; this is a backstop that names them exactly."""
        marker = str(self.ledger.path).encode()
        for pid in {e.pid for e in self.ledger.entries()}:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)


STORES = ("sqlite", "postgres")  # what chaos(store=...) takes


@pytest.fixture
def chaos(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., ChaosCluster]]:
    """Factory: chaos(*server_args, lease=2.0, max_lost=3, store="sqlite", db=None) -> a
    started ChaosCluster. store="postgres": a fresh database on the run's PostgreSQL (the
    postgres_server fixture), dropped afterwards; db=URL: that database (e.g. the `pg`
    fixture's), left to its owner."""
    made: list[ChaosCluster] = []
    with contextlib.ExitStack() as databases:

        def make(
            *server_args: str,
            lease: float = 2.0,
            max_lost: int = 3,
            start: bool = True,
            store: str = "sqlite",
            db: str | None = None,
        ) -> ChaosCluster:
            assert store in STORES, f"store must be one of {STORES}, not {store!r}"
            if db is None and store == "postgres":
                admin = request.getfixturevalue("postgres_server")
                db = databases.enter_context(postgres.database(admin))
            c = ChaosCluster(
                tmp_path / f"cluster{len(made)}",
                *server_args,
                lease=lease,
                max_lost=max_lost,
                db=db,
            )
            made.append(c)
            if start:
                c.start()
            return c

        try:
            yield make
        finally:  # the servers stop before their databases are dropped
            for c in made:
                c.close()


class OwnPostgres:
    """A throwaway PostgreSQL cluster of one test's own (tests.postgres.Cluster), which the
    test may stop and start: never the machine's server on 5432."""

    def __init__(self, cluster: postgres.Cluster) -> None:
        self.cluster = cluster

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.cluster.port}/postgres"

    def halt(self, mode: str) -> None:
        """pg_ctl stop -m `mode` (fast: sessions ended; immediate: as a crash); returns once
        the server is down."""
        self.cluster.halt(mode)

    def resume(self) -> None:
        """pg_ctl start -w: returns once it accepts connections again, on the same port."""
        self.cluster.resume()


@pytest.fixture
def pg() -> Iterator[OwnPostgres]:
    """A PostgreSQL cluster of this test's own (initdb + pg_ctl on a free port), removed
    afterwards; skipped where none can be started (and so a failure in CI). A test names it
    before `chaos`, so that its servers stop before PostgreSQL does."""
    cluster = postgres.Cluster()
    try:
        cluster.start()
    except (subprocess.CalledProcessError, RuntimeError, OSError, KeyError) as e:
        cluster.stop()
        pytest.skip(f"cannot start a PostgreSQL cluster: {getattr(e, 'stderr', '') or e}")
    try:
        yield OwnPostgres(cluster)
    finally:
        cluster.stop()
