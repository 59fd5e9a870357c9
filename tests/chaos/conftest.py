"""Fault-injection fixtures: a restartable cluster, a job ledger and a Jepsen-style checker.

Every test job is a shell command that appends ``start <job> <attempt> <pid> <time>`` to a
ledger file when it starts and ``end <job> <attempt> <pid> <time>`` when it finishes (short
``echo >> file`` lines are single O_APPEND writes, so concurrent jobs do not tear them). After
the queue drains, `check()` compares the ledger with what the server says (status, attempts,
the outcome of every attempt) and counts:

* lost                   accepted (submit returned its id) but not in its expected final state;
* duplicate completions  a job completed (`end`) more than once by attempts the server accepted
                         (outcome succeeded), or one attempt that completed twice;
* superseded             `end` lines of attempts the server had already given up on (lost,
                         released, cancelled): legitimate under at-least-once, the server
                         refused their results;
* duplicate starts       a job started more than once (at-least-once re-runs; informational);
* rerun attempts         the same attempt (fencing token) started twice: never legitimate;
* unexpected             ledger lines of ids never submitted or attempts never handed out;
* phantom                jobs the server calls succeeded whose succeeded attempt never wrote
                         `end`;
* inconsistent           server records that contradict themselves (attempts vs history);
* malformed              ledger lines that are not one whole entry (torn writes).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

from dts.client import Client
from dts.domain import JobSpec, JobStatus, Outcome
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
GAVE_UP = (Outcome.LOST, Outcome.RELEASED, Outcome.CANCELLED)


# ---- the ledger ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    kind: str  # "start" or "end"
    job: int
    attempt: int
    pid: int
    at: float  # wall clock (date +%s.%N)


def _parse(line: str) -> Entry | None:
    parts = line.split()
    if len(parts) != 5 or parts[0] not in ("start", "end"):
        return None
    try:
        return Entry(parts[0], int(parts[1]), int(parts[2]), int(parts[3]), float(parts[4]))
    except ValueError:
        return None


class Ledger:
    """The file every test job appends its start and end to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def _line(self, kind: str) -> str:
        return (
            f'echo {kind} "$DTS_JOB_ID" "$DTS_ATTEMPT" $$ "$(date +%s.%N)" '
            f">> {shlex.quote(str(self.path))}"
        )

    def command(self, body: str) -> str:
        """A shell job: `start` line, then `body`, then (if body did not exit) an `end` line."""
        return f"{self._line('start')}; {body}; {self._line('end')}"

    def sleeper(self, seconds: float) -> str:
        return self.command(f"sleep {seconds:g}")

    def entries(self) -> list[Entry]:
        return [e for e in map(_parse, self.path.read_text().splitlines()) if e is not None]

    def malformed(self) -> list[str]:
        """Lines that are not a whole entry (a torn or interleaved write)."""
        return [line for line in self.path.read_text().splitlines() if _parse(line) is None]

    def starts(self, job: int | None = None) -> list[Entry]:
        return [e for e in self.entries() if e.kind == "start" and job in (None, e.job)]

    def ends(self, job: int | None = None) -> list[Entry]:
        return [e for e in self.entries() if e.kind == "end" and job in (None, e.job)]

    def start_of(self, job: int, attempt: int) -> Entry | None:
        return next((e for e in self.starts(job) if e.attempt == attempt), None)


# ---- the checker --------------------------------------------------------------------------------


@dataclass
class Verdict:
    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    unfinished: int = 0
    lost: int = 0
    duplicate_completions: int = 0
    superseded: int = 0
    duplicate_starts: int = 0
    rerun_attempts: int = 0
    unexpected: int = 0
    phantom: int = 0
    inconsistent: int = 0
    malformed: int = 0
    attempts: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        keys = [f.name for f in fields(self) if f.type == "int"]
        counts = " ".join(f"{k}={getattr(self, k)}" for k in keys)
        outcomes = ",".join(f"{k}:{v}" for k, v in sorted(self.outcomes.items()))
        return f"ledger check: {counts} outcomes[{outcomes}]"

    def __str__(self) -> str:
        shown = self.problems[:20]
        more = f"\n  ... {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        return self.summary() + "".join(f"\n  {p}" for p in shown) + more

    def assert_safe(self, *, allow_duplicate_starts: bool = True) -> None:
        """Nothing lost, nothing completed twice, nothing that nobody asked for."""
        assert self.lost == 0, f"lost jobs: {self}"
        assert self.duplicate_completions == 0, f"duplicate completions: {self}"
        assert self.rerun_attempts == 0, f"an attempt ran twice: {self}"
        assert self.unexpected == 0, f"unexpected executions: {self}"
        assert self.phantom == 0, f"success without a completed run: {self}"
        assert self.inconsistent == 0, f"server records disagree: {self}"
        assert self.malformed == 0, f"torn ledger lines: {self}"
        if not allow_duplicate_starts:
            assert self.duplicate_starts == 0, f"jobs started more than once: {self}"


def check(
    client: Client,
    ledger: Ledger,
    submitted: Iterable[int],
    expect_failed: Iterable[int] = (),
) -> Verdict:
    """Compare the ledger with the server's view of every submitted job (see the module doc)."""
    ids = sorted(set(submitted))
    should_fail = set(expect_failed)
    v = Verdict(submitted=len(ids))
    for line in ledger.malformed():
        v.malformed += 1
        v.problems.append(f"ledger line not a whole entry: {line!r}")
    starts: dict[int, Counter[int]] = defaultdict(Counter)
    ends: dict[int, Counter[int]] = defaultdict(Counter)
    for e in ledger.entries():
        (starts if e.kind == "start" else ends)[e.job][e.attempt] += 1
    known = set(ids)
    for job_id in sorted((set(starts) | set(ends)) - known):
        v.unexpected += 1
        v.problems.append(f"job {job_id}: in the ledger but never submitted")
    for job_id in ids:
        job = client.get(job_id)
        history = client.history(job_id)
        outcome = {a.attempt: a.outcome for a in history}
        v.attempts += len(history)
        v.outcomes.update(a.outcome.value for a in history)
        status = job.status
        if status is JobStatus.SUCCEEDED:
            v.succeeded += 1
        elif status is JobStatus.FAILED:
            v.failed += 1
        elif status is JobStatus.CANCELLED:
            v.cancelled += 1
        else:
            v.unfinished += 1
        expected = JobStatus.FAILED if job_id in should_fail else JobStatus.SUCCEEDED
        if status is not expected:
            v.lost += 1
            v.problems.append(
                f"job {job_id}: LOST: {status} after {job.attempts} attempt(s), expected "
                f"{expected} ({job.error or 'no error'})"
            )
        # the server's own records
        if job.attempts != len(history) or [a.attempt for a in history] != list(
            range(1, len(history) + 1)
        ):
            v.inconsistent += 1
            v.problems.append(f"job {job_id}: attempts={job.attempts} but history {history}")
        wins = [a.attempt for a in history if a.outcome is Outcome.SUCCEEDED]
        if len(wins) > 1 or (status is JobStatus.SUCCEEDED and wins != [job.attempts]):
            v.inconsistent += 1
            v.problems.append(f"job {job_id}: {status} with succeeded attempts {wins}")
        # the ledger against the server
        began, ended = starts.get(job_id, Counter()), ends.get(job_id, Counter())
        v.duplicate_starts += max(0, sum(began.values()) - 1)
        for n, count in sorted(began.items()):
            if count > 1:
                v.rerun_attempts += count - 1
                v.problems.append(f"job {job_id}: attempt {n} started {count} times")
        for n in sorted(set(began) | set(ended)):
            if n not in outcome:
                v.unexpected += 1
                v.problems.append(f"job {job_id}: attempt {n} ran but the server never gave it out")
        accepted_ends = 0
        for n, count in sorted(ended.items()):
            if count > 1:
                v.duplicate_completions += count - 1
                v.problems.append(f"job {job_id}: attempt {n} completed {count} times")
            if outcome.get(n) in GAVE_UP:
                v.superseded += count
            elif outcome.get(n) is Outcome.SUCCEEDED:
                accepted_ends += 1
        if accepted_ends > 1:
            v.duplicate_completions += accepted_ends - 1
            v.problems.append(f"job {job_id}: {accepted_ends} accepted completions")
        if status is JobStatus.SUCCEEDED and ended.get(job.attempts, 0) == 0:
            v.phantom += 1
            v.problems.append(f"job {job_id}: succeeded at attempt {job.attempts} with no `end`")
    return v


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
    """

    def __init__(
        self, root: Path, *server_args: str, lease: float = 2.0, max_lost: int = 3
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
        self.db = root / "dts.db"
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

    def submit(self, commands: Sequence[str], **spec: object) -> list[int]:
        specs = [JobSpec(argv=(c,), shell=True, **spec) for c in commands]  # type: ignore[arg-type]
        return [j.id for j in self.client.submit(specs)]

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

    def db_job(self, job_id: int) -> dict[str, object]:
        """The job's row straight from the server's SQLite file (read-only), for what the API
        does not show: the failure and loss counters and the lease deadline."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        conn.row_factory = sqlite3.Row
        try:
            row = conn.execute(
                "SELECT status, attempts, failures, lost, worker, lease_expires_at"
                " FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
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


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[Callable[..., ChaosCluster]]:
    """Factory: chaos(*server_args, lease=2.0, max_lost=3) -> a started ChaosCluster."""
    made: list[ChaosCluster] = []

    def make(
        *server_args: str, lease: float = 2.0, max_lost: int = 3, start: bool = True
    ) -> ChaosCluster:
        c = ChaosCluster(
            tmp_path / f"cluster{len(made)}", *server_args, lease=lease, max_lost=max_lost
        )
        made.append(c)
        if start:
            c.start()
        return c

    yield make
    for c in made:
        c.close()
