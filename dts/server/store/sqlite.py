"""The SQLite store: one locked connection, WAL, explicit write transactions, versioned schema."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Final

from dts.domain import (
    Assignment,
    Attempt,
    AttemptKey,
    Job,
    JobSpec,
    JobStatus,
    Outcome,
    Output,
    Result,
    WorkerInfo,
    initial_state,
    submitted_job,
)
from dts.errors import FailedPrecondition, Internal, Unavailable
from dts.server.store import chunks, schedules
from dts.server.store.dependencies import DependencyRows, dependencies_ddl
from dts.server.store.purge import FINISHED_INDEX, keys_naming, purge_condition
from dts.server.store.queues import QueueRows, queue_schema
from dts.server.store.reads import (
    NAME_INDEX,
    RUNNING,
    SCHEDULED,
    UNIQUE_HELD,
    UNIQUE_INDEX,
    SqlReads,
    literal,
)
from dts.server.store.rows import (
    ATTEMPT_COLUMNS,
    INSERT_COLUMNS,
    INSERT_COUNT,
    JOB_COLUMNS,
    READY_AT,
    SPEC_COLUMNS,
    WORKER_COLUMNS,
    attempt_of,
    ids_of,
    insert_row,
    job_of,
    ranges_of,
    spec_of,
    worker_of,
)

log = logging.getLogger("dts.store")

SCHEMA_VERSION = 12
BATCH_ROWS = 400  # rows one statement touches by an IN list (SQLite allows 32,766 variables)


# The status changes this store makes in bulk, as a compare-and-set in SQL, so not one job at a
# time through the coordinator's _move and its domain.can_transition check. The SQL is built
# from these, and a unit test checks each against the domain's transition table.
CLAIM: Final = (JobStatus.QUEUED, JobStatus.RUNNING)
FINISH: Final = (JobStatus.RUNNING, JobStatus.SUCCEEDED)
BULK_MOVES: Final = (CLAIM, FINISH)
CLAIM_FROM, CLAIM_TO = (literal(status) for status in CLAIM)
FINISH_FROM, FINISH_TO = (literal(status) for status in FINISH)
ATTEMPT_SUCCEEDED: Final = literal(Outcome.SUCCEEDED)  # the outcome an attempt then records

# Keys of recent submits, so that a retried submit is not stored twice (version 4).
SUBMIT_KEYS = [
    "CREATE TABLE IF NOT EXISTS submit_keys (key TEXT PRIMARY KEY, ids TEXT NOT NULL,"
    " created_at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS submit_keys_by_age ON submit_keys (created_at)",
]

# Unique jobs (version 5): one job that is not final per (queue, unique key).
UNIQUE_JOBS = (
    f"CREATE UNIQUE INDEX IF NOT EXISTS {UNIQUE_INDEX} ON jobs (queue, unique_key)"
    f" WHERE {UNIQUE_HELD}"
)

# Dependencies (version 9): the table, and a unique key held by a waiting job too.
DEPENDENCIES = dependencies_ddl("INTEGER")

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL,
        argv TEXT NOT NULL,             -- JSON array of strings
        shell INTEGER NOT NULL,
        env TEXT NOT NULL,              -- JSON array of [key, value]
        cwd TEXT NOT NULL,
        timeout REAL NOT NULL,
        max_retries INTEGER NOT NULL,
        backoff REAL NOT NULL,
        delay REAL NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0,
        lost INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER,
        error TEXT NOT NULL DEFAULT '',
        worker TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        run_at REAL,
        lease_expires_at REAL,
        limits TEXT NOT NULL DEFAULT '',  -- JSON object of the limits set; '' for none
        unique_key TEXT,                -- NULL: none (version 5)
        schedule TEXT,                  -- the schedule that made it (version 6)
        due_at REAL                     -- the due time it was made for
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, id)",
    "CREATE INDEX IF NOT EXISTS jobs_by_queue ON jobs (queue, id)",
    # SQLite keeps an index's DDL as written: this text must stay byte for byte what it was
    f"CREATE INDEX IF NOT EXISTS jobs_due ON jobs (run_at) WHERE status = {SCHEDULED}",
    f"CREATE INDEX IF NOT EXISTS jobs_leases ON jobs (lease_expires_at) WHERE status = {RUNNING}",
    f"CREATE INDEX IF NOT EXISTS jobs_running_by_worker ON jobs (worker) WHERE status = {RUNNING}",
    UNIQUE_JOBS,
    """CREATE TABLE IF NOT EXISTS attempts (
        job_id INTEGER NOT NULL REFERENCES jobs (id),
        attempt INTEGER NOT NULL,
        worker TEXT NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL,
        exit_code INTEGER,
        outcome TEXT NOT NULL,
        error TEXT NOT NULL DEFAULT '',
        stdout BLOB NOT NULL DEFAULT x'',
        stderr BLOB NOT NULL DEFAULT x'',
        ran_from REAL,                  -- the command's own start, by the worker's clock
        ran_until REAL,                 -- and its end (version 12); NULL: no worker ran it
        PRIMARY KEY (job_id, attempt)
    )""",
    """CREATE TABLE IF NOT EXISTS workers (
        name TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        session TEXT NOT NULL,
        concurrency INTEGER NOT NULL,
        queues TEXT NOT NULL,           -- JSON array
        state TEXT NOT NULL,
        running INTEGER NOT NULL,
        registered_at REAL NOT NULL,
        last_heartbeat REAL NOT NULL,
        credential TEXT NOT NULL DEFAULT '',  -- a non-secret name of the token it registered with
        server TEXT NOT NULL DEFAULT ''  -- the address of the server it last talked to
    )""",
    *SUBMIT_KEYS,
    FINISHED_INDEX,
    *queue_schema("REAL"),
    *schedules.schema("REAL"),
    *DEPENDENCIES,
    NAME_INDEX,
]

INSERT_MARKS = ",".join("?" * INSERT_COUNT)
INSERT_ROWS = 1000  # jobs one INSERT statement adds (16 variables each; SQLite allows 32,766)


# Statements that bring a database of version N-1 to version N (a new one is made at the latest
# version by SCHEMA).
MIGRATIONS: dict[int, list[str]] = {
    2: ["ALTER TABLE jobs ADD COLUMN limits TEXT NOT NULL DEFAULT ''"],
    3: ["ALTER TABLE workers ADD COLUMN credential TEXT NOT NULL DEFAULT ''"],
    4: [*SUBMIT_KEYS, "ALTER TABLE workers ADD COLUMN server TEXT NOT NULL DEFAULT ''"],
    5: ["ALTER TABLE jobs ADD COLUMN unique_key TEXT", UNIQUE_JOBS],
    6: schedules.migration("REAL"),
    7: [FINISHED_INDEX],  # retention finds old final jobs by it
    8: queue_schema("REAL"),  # queue controls: paused, run limit
    9: [f"DROP INDEX IF EXISTS {UNIQUE_INDEX}", UNIQUE_JOBS, *DEPENDENCIES],
    11: [NAME_INDEX],  # the dashboard's name filter
    12: [  # when the command itself ran, by the worker's clock
        "ALTER TABLE attempts ADD COLUMN ran_from REAL",
        "ALTER TABLE attempts ADD COLUMN ran_until REAL",
    ],
}


class SqliteTransaction(QueueRows, schedules.ScheduleWrites, DependencyRows):
    """Statements run inside one BEGIN IMMEDIATE ... COMMIT (which serialises them: no row
    locks needed)."""

    _c: sqlite3.Connection

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._c = conn

    def _execute(self, sql: str, args: Sequence[Any]) -> Any:
        return self._c.execute(sql, args)

    def take_submit_key(self, key: str, now: float) -> list[int] | None:
        row = self._c.execute("SELECT ids FROM submit_keys WHERE key = ?", (key,)).fetchone()
        if row is not None:
            return ids_of(row[0])
        self._c.execute(
            "INSERT INTO submit_keys (key, ids, created_at) VALUES (?, '', ?)", (key, now)
        )
        return None

    def submit_key_time(self, key: str) -> float | None:
        row = self._c.execute("SELECT created_at FROM submit_keys WHERE key = ?", (key,)).fetchone()
        return float(row[0]) if row else None

    def record_submit_key(self, key: str, ids: Sequence[int]) -> None:
        self._c.execute("UPDATE submit_keys SET ids = ? WHERE key = ?", (ranges_of(ids), key))

    def forget_submit_keys(self, before: float) -> int:
        return self._c.execute("DELETE FROM submit_keys WHERE created_at < ?", (before,)).rowcount

    def insert_jobs(self, specs: Sequence[JobSpec], now: float) -> list[Job]:
        jobs: list[Job] = []
        for i in range(0, len(specs), INSERT_ROWS):
            part = specs[i : i + INSERT_ROWS]
            made = [initial_state(spec, now) for spec in part]
            values = [
                v
                for spec, (status, run_at) in zip(part, made, strict=True)
                for v in insert_row(spec, status, now, run_at)
            ]
            rows = self._c.execute(
                f"INSERT INTO jobs ({INSERT_COLUMNS}) VALUES "
                + ",".join(f"({INSERT_MARKS})" for _ in part)
                + " RETURNING id",
                values,
            ).fetchall()
            # ids grow in insertion order (AUTOINCREMENT); RETURNING promises no order
            ids = sorted(row["id"] for row in rows)
            if len(ids) != len(made):
                raise Internal(f"inserted {len(ids)} jobs of {len(made)}")
            jobs += (submitted_job(i, spec, now) for spec, i in zip(part, ids, strict=True))
        return jobs

    def insert_unique(self, spec: JobSpec, now: float) -> Job:
        # this transaction holds the database's write lock: nobody can slip in between
        held = self.unique_holder(spec.queue, spec.unique)
        if held is not None:
            return replace(held, existing=True)
        return self.insert_jobs([spec], now)[0]

    def unique_holder(self, queue: str, key: str) -> Job | None:
        row = self._c.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE queue = ? AND unique_key = ? AND {UNIQUE_HELD}",
            (queue, key),
        ).fetchone()
        return job_of(row) if row else None

    def get_job(self, job_id: int) -> Job | None:
        row = self._c.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return job_of(row) if row else None

    def update_job(self, job: Job) -> None:
        self._c.execute(
            "UPDATE jobs SET status=?, attempts=?, failures=?, lost=?, exit_code=?, error=?,"
            " worker=?, started_at=?, finished_at=?, run_at=?, lease_expires_at=? WHERE id=?",
            (
                job.status.value,
                job.attempts,
                job.failures,
                job.lost,
                job.exit_code,
                job.error,
                job.worker,
                job.started_at,
                job.finished_at,
                job.run_at,
                job.lease_expires_at,
                job.id,
            ),
        )

    def renew_lease(self, job_id: int, attempt: int, worker: str, until: float) -> bool:
        cur = self._c.execute(
            "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND attempts = ? AND worker = ?"
            f" AND status = {RUNNING}",
            (until, job_id, attempt, worker),
        )
        return cur.rowcount == 1

    def extend_leases(self, until: float) -> int:
        cur = self._c.execute(
            f"UPDATE jobs SET lease_expires_at = ? WHERE status = {RUNNING}"
            " AND lease_expires_at < ?",
            (until, until),
        )
        return cur.rowcount

    def claim_queued(
        self,
        job_ids: Sequence[int],
        worker: str,
        queues: Sequence[str],
        now: float,
        lease_until: float,
    ) -> list[Assignment]:
        claimed: list[Assignment] = []
        served = ",".join("?" * len(queues))  # at most MAX_WORKER_QUEUES variables
        for part in chunks(job_ids, BATCH_ROWS):
            marks = ",".join("?" * len(part))
            rows = self._c.execute(
                f"UPDATE jobs SET status = {CLAIM_TO}, attempts = attempts + 1, worker = ?,"
                " started_at = ?, lease_expires_at = ?, exit_code = NULL, error = ''"
                f" WHERE id IN ({marks}) AND status = {CLAIM_FROM} AND queue IN ({served})"
                f" RETURNING {SPEC_COLUMNS}, attempts, {READY_AT}",
                (worker, now, lease_until, *part, *queues),
            ).fetchall()
            claimed += (
                Assignment(row["id"], row["attempts"], spec_of(row), row["ready_at"])
                for row in rows
            )
        if len(claimed) > 1:  # RETURNING has no order: keep the order the ids were taken in
            position = {job_id: i for i, job_id in enumerate(job_ids)}
            claimed.sort(key=lambda a: position[a.job_id])
        self._c.executemany(
            "INSERT INTO attempts (job_id, attempt, worker, started_at, outcome)"
            " VALUES (?,?,?,?,?)",
            ((a.job_id, a.attempt, worker, now, Outcome.RUNNING.value) for a in claimed),
        )
        return claimed

    def finish_succeeded(
        self, worker: str, results: Sequence[Result], now: float
    ) -> dict[AttemptKey, str]:
        recorded: dict[AttemptKey, str] = {}
        for i in range(0, len(results), BATCH_ROWS):
            part = results[i : i + BATCH_ROWS]
            pairs = ",".join("(?,?)" for _ in part)
            rows = self._c.execute(
                f"UPDATE jobs SET status = {FINISH_TO}, exit_code = 0, error = '',"
                " finished_at = ?, lease_expires_at = NULL"
                f" WHERE status = {FINISH_FROM} AND worker = ?"
                f" AND (id, attempts) IN (VALUES {pairs})"
                " RETURNING id, attempts, queue",
                (now, worker, *(v for r in part for v in (r.job_id, r.attempt))),
            ).fetchall()
            recorded.update(((row["id"], row["attempts"]), row["queue"]) for row in rows)
        quiet = [
            r for r in results if not (r.stdout or r.stderr) and (r.job_id, r.attempt) in recorded
        ]
        for i in range(0, len(quiet), BATCH_ROWS):
            part = quiet[i : i + BATCH_ROWS]
            marks = ",".join("(?,?,?,?)" for _ in part)
            self._c.execute(  # VALUES' columns are column1..column4: job, attempt, ran from, until
                "UPDATE attempts SET finished_at = ?, exit_code = 0,"
                f" outcome = {ATTEMPT_SUCCEEDED}, error = '',"
                " ran_from = done.column3, ran_until = done.column4"
                f" FROM (VALUES {marks}) AS done"
                " WHERE attempts.job_id = done.column1 AND attempts.attempt = done.column2",
                (now, *(v for r in part for v in (r.job_id, r.attempt, *r.ran))),
            )
        self._c.executemany(
            "UPDATE attempts SET finished_at = ?, exit_code = 0,"
            f" outcome = {ATTEMPT_SUCCEEDED}, error = '', stdout = ?, stderr = ?,"
            " ran_from = ?, ran_until = ? WHERE job_id = ? AND attempt = ?",
            (
                (now, r.stdout, r.stderr, *r.ran, r.job_id, r.attempt)
                for r in results
                if (r.stdout or r.stderr) and (r.job_id, r.attempt) in recorded
            ),
        )
        return recorded

    def get_attempt(self, job_id: int, attempt: int) -> Attempt | None:
        row = self._c.execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id = ? AND attempt = ?",
            (job_id, attempt),
        ).fetchone()
        return attempt_of(row) if row else None

    def finish_attempt(self, attempt: Attempt, output: Output | None) -> None:
        self._c.execute(
            "UPDATE attempts SET finished_at=?, exit_code=?, outcome=?, error=?, ran_from=?,"
            " ran_until=? "
            "WHERE job_id=? AND attempt=?",
            (
                attempt.finished_at,
                attempt.exit_code,
                attempt.outcome.value,
                attempt.error,
                attempt.ran_from,
                attempt.ran_until,
                attempt.job_id,
                attempt.attempt,
            ),
        )
        if output is not None:
            self._c.execute(
                "UPDATE attempts SET stdout=?, stderr=? WHERE job_id=? AND attempt=?",
                (output.stdout, output.stderr, attempt.job_id, attempt.attempt),
            )

    def save_worker(self, worker: WorkerInfo) -> None:
        self._c.execute(
            f"INSERT OR REPLACE INTO workers ({WORKER_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                worker.name,
                worker.host,
                worker.pid,
                worker.session,
                worker.concurrency,
                json.dumps(list(worker.queues)),
                worker.state.value,
                worker.running,
                worker.registered_at,
                worker.last_heartbeat,
                worker.credential,
                worker.server,
            ),
        )

    def get_worker(self, name: str) -> WorkerInfo | None:
        row = self._c.execute(
            f"SELECT {WORKER_COLUMNS} FROM workers WHERE name = ?", (name,)
        ).fetchone()
        return worker_of(row) if row else None

    def delete_worker(self, name: str) -> None:
        self._c.execute("DELETE FROM workers WHERE name = ?", (name,))


def _create_private(path: str) -> None:
    """Create the database file 0600 (whatever the umask) unless it exists: SQLite's unix VFS
    gives the -wal and -shm files the mode of the database file, so they follow."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)  # the umask may have taken bits off 0600, never added any
    finally:
        os.close(fd)


def _warn_if_exposed(path: str) -> None:
    """Warn about a database (or its -wal/-shm) other users can read, and about a directory
    they can list or enter. An existing file keeps its mode: the operator may mean it."""
    loose = []
    for name in (path, f"{path}-wal", f"{path}-shm"):
        try:
            mode = os.stat(name).st_mode
        except OSError:
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            loose.append(f"{name} (mode {stat.S_IMODE(mode):04o})")
    if loose:
        log.warning(
            "database files can be read by other users: %s; chmod 600 them", ", ".join(loose)
        )
    parent = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(parent).st_mode
    except OSError:
        return
    if mode & (stat.S_IROTH | stat.S_IXOTH):
        log.warning(
            "the database's directory %s is open to other users (mode %04o): chmod o-rwx it",
            parent,
            stat.S_IMODE(mode),
        )


def _hold(path: str) -> int:
    """Lock PATH.lock for this process (its pid written in it), so that no second server opens
    the database; raises FailedPrecondition naming the holder. The lock goes with the process."""
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise FailedPrecondition(
            f"database {path} is in use by another process (pid {holder}); a SQLite store "
            "belongs to one dts-server: give several servers a PostgreSQL store "
            "(--db postgresql://...)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class SqliteStore(SqlReads, schedules.ScheduleReads):
    """A Store on one SQLite file. Thread-safe: one connection, one lock."""

    def __init__(self, path: str, synchronous: str = "full") -> None:
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(parent, exist_ok=True)
            self._held = _hold(path)
            _create_private(path)
            self._c = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._c.row_factory = sqlite3.Row  # rows are read by column name
            self._c.execute("PRAGMA journal_mode = WAL")
            self._c.execute("PRAGMA busy_timeout = 5000")
            self._full = synchronous == "full"
            self._c.execute(f"PRAGMA synchronous = {'FULL' if self._full else 'NORMAL'}")
            self._c.execute("PRAGMA foreign_keys = ON")
        except (sqlite3.Error, OSError) as e:
            raise Unavailable(f"cannot open database {path}: {e}") from e
        self._lock = threading.RLock()
        self._migrate()
        _warn_if_exposed(path)

    def _migrate(self) -> None:
        with self._lock:
            self._c.execute("BEGIN IMMEDIATE")
            try:
                known = self._c.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
                ).fetchone()
                row = (
                    self._c.execute(
                        "SELECT value FROM meta WHERE key = 'schema_version'"
                    ).fetchone()
                    if known
                    else None
                )
                version = int(row["value"]) if row else 0
                if version > SCHEMA_VERSION:
                    raise Internal(
                        f"{self.path} has schema version {version}; this dts knows {SCHEMA_VERSION}"
                    )
                for target in range(version + 1, SCHEMA_VERSION + 1) if version else ():
                    for statement in MIGRATIONS.get(target, []):
                        self._c.execute(statement)
                for statement in SCHEMA:
                    self._c.execute(statement)
                self._c.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                self._c.execute("COMMIT")
            except BaseException:
                self._c.execute("ROLLBACK")
                raise

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[SqliteTransaction]:
        """BEGIN IMMEDIATE ... COMMIT. `durable=False` skips the commit's fsync (it survives a
        crash of this process, not of the machine): for soft state such as lease renewals,
        which the next durable commit makes durable too, as WAL frames are synced in order."""
        with self._lock:
            soft = not durable and self._full
            if soft:
                self._c.execute("PRAGMA synchronous = NORMAL")
            try:
                self._c.execute("BEGIN IMMEDIATE")
                try:
                    yield SqliteTransaction(self._c)
                except BaseException:
                    self._c.execute("ROLLBACK")
                    raise
                self._c.execute("COMMIT")
            finally:
                if soft:
                    self._c.execute("PRAGMA synchronous = FULL")

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._c.execute(sql, args).fetchall()

    # ---- copying a history (dts-server copy-history) --------------------------------------

    PARAM = "?"

    def put_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert rows as they are, ids included, in one transaction."""
        marks = ",".join("?" * len(columns))
        with self.transaction():
            self._c.executemany(f"INSERT INTO {table} ({','.join(columns)}) VALUES ({marks})", rows)

    def ids_copied(self) -> None:
        """Nothing to do: AUTOINCREMENT goes on after the largest id ever inserted."""

    def statuses(self, ids: Sequence[int]) -> dict[int, Job]:
        found: dict[int, Job] = {}
        for part in chunks(ids, 500):
            marks = ",".join("?" * len(part))
            for row in self._all(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id IN ({marks})", part):
                job = job_of(row)
                found[job.id] = job
        return found

    def purge(self, before: float, statuses: Collection[JobStatus], queue: str, limit: int) -> int:
        cond, args = purge_condition(before, statuses, queue, "?")
        with self.transaction():
            # by the index of finished jobs: the planner would rather walk every final job
            rows = self._c.execute(
                f"SELECT id, created_at FROM jobs INDEXED BY jobs_finished WHERE {cond} LIMIT ?",
                (*args, limit),
            ).fetchall()
            ids = [row["id"] for row in rows]
            # a submit's key has its jobs' created_at (one reading of the clock)
            times = sorted({row["created_at"] for row in rows})
            for part in chunks(times, BATCH_ROWS):
                marks = ",".join("?" * len(part))
                keys = self._c.execute(
                    f"SELECT key, ids FROM submit_keys WHERE created_at IN ({marks})", part
                ).fetchall()
                self._c.executemany(
                    "DELETE FROM submit_keys WHERE key = ?",
                    ((key,) for key in keys_naming(keys, set(ids))),
                )
            for part in chunks(ids, BATCH_ROWS):
                marks = ",".join("?" * len(part))
                self._c.execute(f"DELETE FROM attempts WHERE job_id IN ({marks})", part)
                self._c.execute(f"DELETE FROM dependencies WHERE job_id IN ({marks})", part)
                self._c.execute(f"DELETE FROM jobs WHERE id IN ({marks})", part)
        return len(ids)

    shared = False  # the file is locked to one server

    def lead(self) -> bool:
        return True

    def close(self) -> None:
        with self._lock:
            self._c.close()
            if self._held >= 0:
                os.close(self._held)
                self._held = -1
