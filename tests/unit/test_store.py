"""Unit tests of dts.server.store.sqlite.SqliteStore on a temporary database file."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from dts.controls import QueueSetting
from dts.domain import (
    Attempt,
    Job,
    JobFilter,
    JobSpec,
    JobStatus,
    Outcome,
    Output,
    Result,
    StatCount,
    WorkerInfo,
    WorkerState,
    can_transition,
)
from dts.errors import Internal, Unavailable
from dts.limits import Limits
from dts.server.store.reads import NAMED, UNIQUE_HELD
from dts.server.store.sqlite import (
    BULK_MOVES,
    CLAIM,
    FINISH,
    SCHEMA,
    SCHEMA_VERSION,
    SqliteStore,
)

S = JobStatus
NASTY = "'; DROP TABLE jobs; --"


def spec(*argv: str, **kw: object) -> JobSpec:
    """A spec as the coordinator stores it: server defaults filled in."""
    base = JobSpec(argv=argv or ("true",), **kw)  # type: ignore[arg-type]
    return base.with_defaults(max_retries=2, backoff=1.5, timeout=30.0)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "dts.db"  # the parent directory does not exist yet


@pytest.fixture
def store(db: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(str(db), synchronous="normal")
    yield s
    s.close()


def add(store: SqliteStore, *specs: JobSpec, now: float = 100.0) -> list[Job]:
    """Submit `specs` at `now` in one transaction, as the coordinator does: a spec with a
    delay is scheduled for `now` + delay, the others are queued."""
    with store.transaction() as tx:
        return tx.insert_jobs(specs, now)


def add_scheduled(store: SqliteStore, name: str, run_at: float) -> Job:
    """A job scheduled for `run_at`: submitted at time 0 with that delay."""
    (job,) = add(store, spec(name, delay=run_at), now=0.0)
    return job


def claim(store: SqliteStore, job: Job, worker: str = "w", now: float = 1.0) -> int:
    """Claim queued `job` for `worker` at `now`, as a worker's exchange does; its attempt."""
    with store.transaction() as tx:
        (taken,) = tx.claim_queued([job.id], worker, [job.spec.queue], now, now + 30.0)
    return taken.attempt


def schema_version(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(
            conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        )
    finally:
        conn.close()


# ---- jobs -------------------------------------------------------------------------------------


def test_insert_get_update_in_a_transaction(store: SqliteStore) -> None:
    full = spec(
        "python3",
        "-c",
        "print(1)",
        queue="q1",
        priority=5,
        delay=2.5,
        env=(("A", "1"), ("B", "x y")),
        cwd="/tmp",
        name="first",
    )
    with store.transaction() as tx:
        (job,) = tx.insert_jobs([full], 1000.25)  # delay 2.5: scheduled
        assert job.id > 0
        assert tx.get_job(job.id) == job  # visible inside its own transaction
    assert job == Job(id=job.id, spec=full, status=S.SCHEDULED, created_at=1000.25, run_at=1002.75)
    assert store.get_job(job.id) == job

    running = replace(
        job,
        status=S.RUNNING,
        attempts=1,
        failures=1,
        lost=2,
        exit_code=3,
        error="exited with code 3",
        worker="host:1",
        started_at=1003.0,
        run_at=None,
        lease_expires_at=1033.0,
    )
    with store.transaction() as tx:
        tx.update_job(running)
    assert store.get_job(job.id) == running
    done = replace(running, status=S.FAILED, finished_at=1004.0, lease_expires_at=None)
    with store.transaction() as tx:
        tx.update_job(done)
    assert store.get_job(job.id) == done


def test_ids_increase(store: SqliteStore) -> None:
    ids = [j.id for j in add(store, spec("a"), spec("b"), spec("c"))]
    assert ids == sorted(ids) and len(set(ids)) == 3


def test_a_big_batch_reads_back_as_it_was_returned(store: SqliteStore) -> None:
    # (a store may take another path for big batches: PostgreSQL's COPY)
    specs = [
        spec(f"job {i}", NASTY, name=f"n{i}", env=(("K", f"v{i}\t\\"),), delay=float(i % 2))
        for i in range(300)
    ]
    jobs = add(store, *specs)
    ids = [j.id for j in jobs]
    assert ids == sorted(ids) and len(set(ids)) == 300
    assert [j.spec for j in jobs] == specs
    assert [store.get_job(i) for i in ids] == jobs
    [after] = add(store, spec("after"))
    assert after.id > ids[-1]


def test_a_submit_key_is_taken_once_and_answers_with_its_ids(store: SqliteStore) -> None:
    # Given a submit stored under a key
    with store.transaction() as tx:
        assert tx.take_submit_key("k1", 100.0) is None
        jobs = tx.insert_jobs([spec("a"), spec("b"), spec("c")], 100.0)
        tx.record_submit_key("k1", [j.id for j in jobs])
    # When the key comes again, then it answers with those ids, and nothing else is taken
    with store.transaction() as tx:
        assert tx.take_submit_key("k1", 200.0) == [j.id for j in jobs]
        assert tx.take_submit_key("k2", 200.0) is None
        tx.record_submit_key("k2", [7, 8, 9, 12])
    with store.transaction() as tx:
        assert tx.take_submit_key("k2", 300.0) == [7, 8, 9, 12]
    # And keys older than a time are forgotten: a retry after that is a new submit
    with store.transaction() as tx:
        assert tx.forget_submit_keys(150.0) == 1
        assert tx.take_submit_key("k1", 400.0) is None
        assert tx.take_submit_key("k2", 400.0) == [7, 8, 9, 12]


def test_a_submit_key_taken_in_a_rolled_back_transaction_is_free(store: SqliteStore) -> None:
    with pytest.raises(RuntimeError), store.transaction() as tx:
        assert tx.take_submit_key("k", 100.0) is None
        raise RuntimeError("the submit failed")
    with store.transaction() as tx:
        assert tx.take_submit_key("k", 100.0) is None


def test_missing_job_is_none(store: SqliteStore) -> None:
    assert store.get_job(12345) is None
    with store.transaction() as tx:
        assert tx.get_job(12345) is None


def test_rollback_on_exception_leaves_nothing(store: SqliteStore) -> None:
    (kept,) = add(store, spec("kept"))
    with pytest.raises(RuntimeError, match="boom"), store.transaction() as tx:
        (new,) = tx.insert_jobs([spec("lost")], 1.0)
        assert len(tx.claim_queued([kept.id], "w", ["default"], 2.0, 32.0)) == 1
        tx.update_job(replace(kept, status=S.CANCELLED, attempts=1))
        raise RuntimeError("boom")
    assert store.get_job(new.id) is None
    assert store.get_job(kept.id) == kept
    assert store.attempts(kept.id) == []
    assert [j.id for j in store.list_jobs(JobFilter())] == [kept.id]
    # the connection is usable again afterwards
    (after,) = add(store, spec("after"))
    assert store.get_job(after.id) is not None


def test_transaction_commits_only_at_the_end(store: SqliteStore, db: Path) -> None:
    with store.transaction() as tx:
        (job,) = tx.insert_jobs([spec("x")], 1.0)
        other = sqlite3.connect(db)  # another connection sees nothing yet
        try:
            assert other.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
        finally:
            other.close()
    assert store.get_job(job.id) == job


def test_list_jobs_newest_first_with_filters_and_limit(store: SqliteStore) -> None:
    a = add(store, spec("1", queue="a"), spec("2", queue="b"), spec("3", queue="a"))
    s = add(store, spec("4", queue="a", delay=400.0), spec("5", queue="b", delay=400.0))
    ids = [j.id for j in a + s]

    def listed(**kw: object) -> list[int]:
        return [j.id for j in store.list_jobs(JobFilter(**kw))]  # type: ignore[arg-type]

    assert listed() == ids[::-1]
    assert listed(limit=2) == ids[::-1][:2]
    assert listed(status=S.QUEUED) == [ids[2], ids[1], ids[0]]
    assert listed(queue="a") == [ids[3], ids[2], ids[0]]
    assert listed(status=S.SCHEDULED, queue="b") == [ids[4]]
    assert listed(status=S.QUEUED, queue="a", limit=1) == [ids[2]]
    assert listed(status=S.RUNNING) == []
    assert listed(queue="nope") == []


def test_list_jobs_by_name_time_and_keyset_pages(store: SqliteStore) -> None:
    # Given jobs named a and b submitted at times 100, 200 and 300
    early = add(store, spec("1", name="a"), spec("2", name="b"), now=100.0)
    mid = add(store, spec("3", name="a"), now=200.0)
    late = add(store, spec("4", name="a"), spec("5", name=NASTY), now=300.0)
    ids = [j.id for j in early + mid + late]

    def listed(**kw: object) -> list[int]:
        return [j.id for j in store.list_jobs(JobFilter(**kw))]  # type: ignore[arg-type]

    # Then each filter narrows, and pages by id continue where the last ended
    assert listed(name="a") == [ids[3], ids[2], ids[0]]
    assert listed(name=NASTY) == [ids[4]]
    assert listed(name="nope") == []
    assert listed(name="") == []  # every job here has a name
    assert listed(since=200.0) == [ids[4], ids[3], ids[2]]
    assert listed(until=200.0) == [ids[1], ids[0]]
    assert listed(since=150.0, until=250.0) == [ids[2]]
    first = listed(limit=2)
    assert first == [ids[4], ids[3]]
    assert listed(limit=2, before_id=first[-1]) == [ids[2], ids[1]]
    assert listed(limit=2, before_id=ids[1]) == [ids[0]]
    assert listed(name="a", before_id=ids[3], limit=1) == [ids[2]]


def test_activity_counts_finished_jobs_by_minute(store: SqliteStore) -> None:
    # Given jobs that ended at 30 s, 90 s (two) and 95 s, succeeded, failed and cancelled
    jobs = add(store, spec("1"), spec("2"), spec("3"), spec("4"), spec("5"))
    ends = [(30.0, S.SUCCEEDED), (90.0, S.SUCCEEDED), (95.0, S.FAILED), (95.0, S.CANCELLED)]
    with store.transaction() as tx:
        for job, (at, status) in zip(jobs, ends, strict=False):
            tx.update_job(replace(job, status=status, finished_at=at))
    # Then the counts are by truncated minute and status, from `since` on
    assert sorted(store.activity(0.0)) == sorted(
        [(0, S.SUCCEEDED, 1), (1, S.SUCCEEDED, 1), (1, S.FAILED, 1), (1, S.CANCELLED, 1)]
    )
    assert sorted(store.activity(60.0)) == sorted(
        [(1, S.SUCCEEDED, 1), (1, S.FAILED, 1), (1, S.CANCELLED, 1)]
    )


def test_stats(store: SqliteStore) -> None:
    add(store, spec(queue="a"), spec(queue="a"), spec(queue="b"))
    add(store, spec(queue="a", delay=1.0))
    assert store.stats() == [
        StatCount("a", S.QUEUED, 2),
        StatCount("a", S.SCHEDULED, 1),
        StatCount("b", S.QUEUED, 1),
    ]


# ---- attempts and output ------------------------------------------------------------------------


def test_attempts_and_output_round_trip(store: SqliteStore) -> None:
    (job,) = add(store, spec("x"))
    out = b"\xff\xfe\x00\x80 not utf-8 \xc3\x28" * 1000
    err = b"\x00" * 10 + "h\u00e9".encode()
    # attempt 1 by w1 fails; the job is queued again and w2 takes attempt 2
    first = Attempt(
        job.id, 1, "w1", 10.0, 11.5, 1, Outcome.FAILED, "exited with code 1", 0, 0, 10.25, 11.125
    )
    assert claim(store, job, "w1", 10.0) == 1
    with store.transaction() as tx:
        tx.finish_attempt(first, Output(1, b"one", b""))
        tx.update_job(replace(job, attempts=1, failures=1))  # queued, as a retry with no backoff
    assert claim(store, job, "w2", 20.0) == 2
    with store.transaction() as tx:
        running = tx.get_attempt(job.id, 2)
    assert running == Attempt(job.id, 2, "w2", 20.0)
    assert store.output(job.id, 2) == Output(2, b"", b"")

    second = Attempt(job.id, 2, "w2", 20.0, 21.0, 0, Outcome.SUCCEEDED)
    with store.transaction() as tx:
        tx.finish_attempt(second, Output(2, out, err))

    assert store.output(job.id, 2) == Output(2, out, err)
    assert store.output(job.id, 1) == Output(1, b"one", b"")
    assert store.attempts(job.id) == [
        replace(first, stdout_bytes=3, stderr_bytes=0),
        replace(second, stdout_bytes=len(out), stderr_bytes=len(err)),
    ]
    with store.transaction() as tx:
        assert tx.get_attempt(job.id, 2) == store.attempts(job.id)[1]


def test_bulk_success_records_when_each_command_ran(store: SqliteStore) -> None:
    # Given three running attempts of one worker
    jobs = add(store, spec("a"), spec("b"), spec("c"))
    for job in jobs:
        claim(store, job, "w", 1.0)
    a, b, c = (job.id for job in jobs)
    # When they succeed together: with and without output, and one the worker never timed
    done = [
        Result(a, 1, Outcome.SUCCEEDED, 0, started_at=1.5, finished_at=1.75),
        Result(b, 1, Outcome.SUCCEEDED, 0, stdout=b"out", started_at=1.25, finished_at=2.5),
        Result(c, 1, Outcome.SUCCEEDED, 0),
    ]
    with store.transaction() as tx:
        assert len(tx.finish_succeeded("w", done, 3.0)) == 3
    # Then each attempt has its own command's times, by the worker's clock; none if unknown
    ran = [(t.ran_from, t.ran_until) for job in jobs for t in store.attempts(job.id)]
    assert ran == [(1.5, 1.75), (1.25, 2.5), (None, None)]
    assert store.output(b, 1) == Output(1, b"out", b"")


def test_finish_without_output_keeps_the_stored_output(store: SqliteStore) -> None:
    (job,) = add(store, spec("x"))
    claim(store, job, "w", 1.0)
    with store.transaction() as tx:
        tx.finish_attempt(
            Attempt(job.id, 1, "w", 1.0, 2.0, 0, Outcome.SUCCEEDED), Output(1, b"o", b"e")
        )
    with store.transaction() as tx:
        tx.finish_attempt(Attempt(job.id, 1, "w", 1.0, 3.0, None, Outcome.LOST, "lost"), None)
    assert store.output(job.id, 1) == Output(1, b"o", b"e")
    assert store.attempts(job.id)[0].outcome is Outcome.LOST


def test_missing_attempt(store: SqliteStore) -> None:
    (job,) = add(store, spec("x"))
    assert store.output(job.id, 1) is None
    assert store.attempts(job.id) == []
    with store.transaction() as tx:
        assert tx.get_attempt(job.id, 1) is None


def test_attempt_of_a_missing_job_is_refused(store: SqliteStore) -> None:
    # a claim of a job that does not exist takes nothing and starts no attempt
    with store.transaction() as tx:
        assert tx.claim_queued([999], "w", ["default"], 1.0, 2.0) == []
    assert store.attempts(999) == []
    # and the schema refuses such an attempt anyway (foreign keys are on)
    with pytest.raises(sqlite3.IntegrityError):
        store._all(
            "INSERT INTO attempts (job_id, attempt, worker, started_at, outcome)"
            " VALUES (999, 1, 'w', 1.0, 'running')"
        )
    assert store.attempts(999) == []


# ---- scheduling queries -------------------------------------------------------------------------


def test_due_jobs_earliest_first(store: SqliteStore) -> None:
    late, early, future, exact = (
        add_scheduled(store, n, t)
        for n, t in (("late", 50.0), ("early", 10.0), ("future", 1000.0), ("exact", 100.0))
    )
    add(store, spec("queued"))  # not scheduled: never due
    assert store.due_jobs(100.0, 10) == [early.id, late.id, exact.id]  # run_at <= now
    assert store.due_jobs(100.0, 2) == [early.id, late.id]
    assert store.due_jobs(5.0, 10) == []
    assert store.next_run_at() == 10.0
    with store.transaction() as tx:
        tx.update_job(replace(early, status=S.QUEUED, run_at=None))
    assert store.next_run_at() == 50.0
    assert future.id not in store.due_jobs(999.0, 10)


def test_next_run_at_without_scheduled_jobs(store: SqliteStore) -> None:
    add(store, spec("q"))
    assert store.next_run_at() is None


def test_expired_leases_oldest_first(store: SqliteStore) -> None:
    jobs = add(store, spec("a"), spec("b"), spec("c"), spec("d"))
    leases = [30.0, 10.0, 100.0, 20.0]
    with store.transaction() as tx:
        for j, until in zip(jobs, leases, strict=True):
            tx.update_job(
                replace(j, status=S.RUNNING, attempts=1, worker="w", lease_expires_at=until)
            )
        # a finished job's old lease does not count
        tx.update_job(replace(jobs[3], status=S.SUCCEEDED, lease_expires_at=20.0))
    a, b, c, _ = jobs
    assert store.expired_leases(100.0, 10) == [b.id, a.id]  # strictly before now
    assert store.expired_leases(100.1, 10) == [b.id, a.id, c.id]
    assert store.expired_leases(100.1, 1) == [b.id]
    assert store.expired_leases(5.0, 10) == []


def test_renew_lease_is_fenced(store: SqliteStore) -> None:
    (job,) = add(store, spec("a"))
    running = replace(job, status=S.RUNNING, attempts=2, worker="w1", lease_expires_at=10.0)
    with store.transaction() as tx:
        tx.update_job(running)
        assert tx.renew_lease(job.id, 2, "w1", 50.0) is True
        assert tx.renew_lease(job.id, 1, "w1", 60.0) is False  # stale attempt
        assert tx.renew_lease(job.id, 2, "w2", 60.0) is False  # another worker
        assert tx.renew_lease(job.id + 1, 2, "w1", 60.0) is False
    renewed = store.get_job(job.id)
    assert renewed is not None and renewed.lease_expires_at == 50.0
    with store.transaction() as tx:
        tx.update_job(replace(running, status=S.SUCCEEDED))
        assert tx.renew_lease(job.id, 2, "w1", 70.0) is False  # no longer running


def test_running_of(store: SqliteStore) -> None:
    a, b, c = add(store, spec("a"), spec("b"), spec("c"))
    with store.transaction() as tx:
        tx.update_job(replace(a, status=S.RUNNING, worker="w1", attempts=1))
        tx.update_job(replace(b, status=S.RUNNING, worker="w2", attempts=1))
        tx.update_job(replace(c, status=S.FAILED, worker="w1", attempts=1))
    assert [j.id for j in store.running_of("w1")] == [a.id]
    assert store.running_of("nobody") == []


def test_queued_pages_by_id(store: SqliteStore) -> None:
    jobs = add(store, *(spec(str(i)) for i in range(5)))
    add_scheduled(store, "sched", 1.0)
    ids = [j.id for j in jobs]
    assert [j.id for j in store.queued(0, 100)] == ids
    assert [j.id for j in store.queued(0, 2)] == ids[:2]
    assert [j.id for j in store.queued(ids[1], 2)] == ids[2:4]
    assert store.queued(ids[-1], 10) == []
    assert store.queued(0, 1)[0] == jobs[0]


def test_statuses_across_chunks(store: SqliteStore) -> None:
    jobs = add(store, *(spec(str(i)) for i in range(1200)))
    wanted = [j.id for j in jobs[::2]] + [10**9, 10**9 + 1]
    found = store.statuses(wanted)
    assert set(found) == {j.id for j in jobs[::2]}
    assert found[jobs[0].id] == jobs[0]
    assert store.statuses([]) == {}


# ---- workers ------------------------------------------------------------------------------------


def test_workers_save_get_replace(store: SqliteStore) -> None:
    w2 = WorkerInfo("w2", "h", 2, "s2", 1, ("default",), WorkerState.IDLE, 0, 1.0, 2.0)
    w1 = WorkerInfo("w1", "h", 1, "s1", 4, ("hi", "lo"), WorkerState.BUSY, 3, 1.0, 5.0, "bound:w1")
    with store.transaction() as tx:
        tx.save_worker(w2)
        tx.save_worker(w1)
        assert tx.get_worker("w1") == w1
        assert tx.get_worker("nobody") is None
    assert store.workers() == [w1, w2]
    moved = replace(w1, pid=99, session="s3", state=WorkerState.DRAINING, last_heartbeat=9.0)
    with store.transaction() as tx:
        tx.save_worker(moved)
    assert store.workers() == [moved, w2]


# ---- file, schema, hostile text ---------------------------------------------------------------


def test_reopening_keeps_data_and_schema_version(db: Path) -> None:
    s = SqliteStore(str(db))
    (job,) = add(s, spec("persist", name="kept"))
    claim(s, job, "w", 1.0)
    with s.transaction() as tx:
        ok = Result(job.id, 1, Outcome.SUCCEEDED, 0, stdout=b"\xff")
        assert tx.finish_succeeded("w", [ok], 2.0) == {(job.id, 1): job.spec.queue}
    done = s.get_job(job.id)
    assert done is not None and done.status is S.SUCCEEDED
    s.close()
    assert schema_version(db) == str(SCHEMA_VERSION)

    again = SqliteStore(str(db))
    try:
        assert again.get_job(job.id) == done
        assert again.output(job.id, 1) == Output(1, b"\xff", b"")
        (second,) = add(again, spec("more"))
        assert second.id > job.id
    finally:
        again.close()
    assert schema_version(db) == str(SCHEMA_VERSION)


# The jobs table as dts wrote it at schema version 1, before per-job limits.
SCHEMA_V1_JOBS = """CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, queue TEXT NOT NULL,
    priority INTEGER NOT NULL, argv TEXT NOT NULL, shell INTEGER NOT NULL, env TEXT NOT NULL,
    cwd TEXT NOT NULL, timeout REAL NOT NULL, max_retries INTEGER NOT NULL, backoff REAL NOT NULL,
    delay REAL NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0, lost INTEGER NOT NULL DEFAULT 0, exit_code INTEGER,
    error TEXT NOT NULL DEFAULT '', worker TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL,
    started_at REAL, finished_at REAL, run_at REAL, lease_expires_at REAL)"""


# The workers table as dts wrote it at schema versions 1 and 2, before credentials.
SCHEMA_V2_WORKERS = """CREATE TABLE workers (
    name TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, session TEXT NOT NULL,
    concurrency INTEGER NOT NULL, queues TEXT NOT NULL, state TEXT NOT NULL,
    running INTEGER NOT NULL, registered_at REAL NOT NULL, last_heartbeat REAL NOT NULL)"""


# The attempts table as dts wrote it at schema versions 1 to 11, before the worker's own times.
SCHEMA_V11_ATTEMPTS = """CREATE TABLE attempts (
    job_id INTEGER NOT NULL REFERENCES jobs (id), attempt INTEGER NOT NULL,
    worker TEXT NOT NULL, started_at REAL NOT NULL, finished_at REAL, exit_code INTEGER,
    outcome TEXT NOT NULL, error TEXT NOT NULL DEFAULT '', stdout BLOB NOT NULL DEFAULT x'',
    stderr BLOB NOT NULL DEFAULT x'', PRIMARY KEY (job_id, attempt))"""


def old_database(db: Path, version: int) -> sqlite3.Connection:
    """A database as dts wrote it at schema `version` (1 or 2), with no rows yet."""
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(version),))
    conn.execute(SCHEMA_V1_JOBS)
    if version >= 2:
        conn.execute("ALTER TABLE jobs ADD COLUMN limits TEXT NOT NULL DEFAULT ''")
    conn.execute(SCHEMA_V11_ATTEMPTS)
    conn.execute(SCHEMA_V2_WORKERS)
    return conn


def before_version_12(conn: sqlite3.Connection) -> None:
    """Take from a current database what version 12 added: the worker's times of attempts."""
    conn.execute("ALTER TABLE attempts DROP COLUMN ran_from")
    conn.execute("ALTER TABLE attempts DROP COLUMN ran_until")


def test_a_version_11_database_is_migrated_and_keeps_its_attempts(db: Path) -> None:
    # Given a database as dts left it at schema version 11 (before the worker's own times),
    # with a finished attempt in it
    s = SqliteStore(str(db))
    (job,) = add(s, spec("old"))
    claim(s, job, "w", 1.0)
    with s.transaction() as tx:
        tx.finish_succeeded("w", [Result(job.id, 1, Outcome.SUCCEEDED, 0, stdout=b"hi")], 2.0)
    before = s.attempts(job.id)
    s.close()
    conn = sqlite3.connect(db)
    before_version_12(conn)
    conn.execute("UPDATE meta SET value = '11' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    # When this dts opens it
    again = SqliteStore(str(db))
    try:
        # Then the attempt reads back as it was, with no times of the worker's, and output kept
        assert again.attempts(job.id) == before
        assert before[0].ran_from is None and before[0].ran_until is None
        assert again.output(job.id, 1) == Output(1, b"hi", b"")
        assert schema_version(db) == str(SCHEMA_VERSION) == "12"
    finally:
        again.close()


def test_a_version_1_database_is_migrated_and_keeps_its_jobs(db: Path) -> None:
    # Given a database written by dts at schema version 1, with a job in it
    conn = old_database(db, 1)
    conn.execute(
        "INSERT INTO jobs (name, queue, priority, argv, shell, env, cwd, timeout, max_retries,"
        " backoff, delay, status, created_at) VALUES"
        " ('old', 'default', 3, '[\"echo\", \"hi\"]', 0, '[[\"A\", \"1\"]]', '', 5, 1, 2, 0,"
        " 'succeeded', 100)"
    )
    conn.commit()
    conn.close()
    # When this dts opens it
    s = SqliteStore(str(db))
    try:
        # Then the old job reads back whole, with no limits, and the schema is current
        old = s.get_job(1)
        assert old is not None and old.status is S.SUCCEEDED
        assert old.spec == JobSpec(
            argv=("echo", "hi"),
            queue="default",
            priority=3,
            max_retries=1,
            backoff=2.0,
            timeout=5.0,
            env=(("A", "1"),),
            name="old",
        )
        assert schema_version(db) == str(SCHEMA_VERSION)
        # And new jobs keep their limits
        limited = spec("x", limits=Limits(cpu=3, output=10))
        (new,) = add(s, limited)
        assert s.get_job(new.id) == new and new.spec.limits == Limits(cpu=3, output=10)
    finally:
        s.close()


def test_a_version_2_database_is_migrated_and_keeps_its_workers(db: Path) -> None:
    # Given a database written by dts at schema version 2, with a worker in it
    conn = old_database(db, 2)
    conn.execute(
        "INSERT INTO workers VALUES ('w1', 'h', 7, 's1', 2, '[\"default\"]', 'idle', 0, 1.0, 2.0)"
    )
    conn.commit()
    conn.close()
    # When this dts opens it
    s = SqliteStore(str(db))
    try:
        # Then the worker reads back whole, registered with no recorded credential
        old = WorkerInfo("w1", "h", 7, "s1", 2, ("default",), WorkerState.IDLE, 0, 1.0, 2.0)
        assert s.workers() == [old]
        assert old.credential == ""
        assert schema_version(db) == str(SCHEMA_VERSION)
        # And a worker's credential is kept from now on
        with s.transaction() as tx:
            tx.save_worker(replace(old, session="s2", credential="sha256:0123456789abcdef"))
        assert s.workers()[0].credential == "sha256:0123456789abcdef"
    finally:
        s.close()


def test_a_version_3_database_gets_its_submit_keys_table(db: Path) -> None:
    conn = old_database(db, 2)
    conn.execute("ALTER TABLE workers ADD COLUMN credential TEXT NOT NULL DEFAULT ''")
    conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    s = SqliteStore(str(db))
    try:
        with s.transaction() as tx:
            assert tx.take_submit_key("k", 1.0) is None
            tx.record_submit_key("k", [1])
        with s.transaction() as tx:
            assert tx.take_submit_key("k", 2.0) == [1]
        assert schema_version(db) == str(SCHEMA_VERSION)
        # and its workers a column for the server each talks to
        old = WorkerInfo("w1", "h", 7, "s1", 2, ("default",), WorkerState.IDLE, 0, 1.0, 2.0)
        with s.transaction() as tx:
            tx.save_worker(replace(old, server="10.0.0.1:50051"))
        assert s.workers()[0].server == "10.0.0.1:50051"
    finally:
        s.close()


def test_a_version_4_database_gets_unique_keys_and_the_index_of_finished_jobs(db: Path) -> None:
    # Given a database at schema version 4 with a job in it
    conn = old_database(db, 2)
    conn.execute("ALTER TABLE workers ADD COLUMN credential TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE workers ADD COLUMN server TEXT NOT NULL DEFAULT ''")
    conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    conn.execute(
        "INSERT INTO jobs (name, queue, priority, argv, shell, env, cwd, timeout, max_retries,"
        " backoff, delay, status, created_at) VALUES"
        " ('old', 'default', 0, '[\"true\"]', 0, '[]', '', 5, 1, 2, 0, 'queued', 100)"
    )
    conn.commit()
    conn.close()
    # When this dts opens it
    s = SqliteStore(str(db))
    try:
        # Then the old job has no unique key, and a key is taken once while its job lives
        old = s.get_job(1)
        assert old is not None and old.spec.unique == ""
        with s.transaction() as tx:
            first = tx.insert_unique(spec("a", unique="k"), 200.0)
            again = tx.insert_unique(spec("b", unique="k"), 201.0)
        assert (first.existing, again.existing, again.id) == (False, True, first.id)
        assert schema_version(db) == str(SCHEMA_VERSION)
        # And the purge's index of finished jobs is there
        names = {r[0] for r in s._c.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "jobs_finished" in names
        # And the schema itself refuses a second live job of the key
        with pytest.raises(sqlite3.IntegrityError), s.transaction() as tx:
            tx.insert_jobs([spec("c", unique="k")], 202.0)
    finally:
        s.close()


def test_a_version_7_database_gets_its_queues_table(db: Path) -> None:
    # Given a database as dts left it at schema version 7 (before queue controls)
    SqliteStore(str(db)).close()
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE queues")
    conn.execute("DROP INDEX jobs_running_by_queue")
    before_version_12(conn)
    conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    # When this dts opens it, then queue settings are kept and the schema is current
    s = SqliteStore(str(db))
    try:
        with s.transaction() as tx:
            tx.save_queue(QueueSetting("q", paused=True, updated_at=1.0))
        assert s.queue_settings() == [QueueSetting("q", True, None, 1.0)]
        assert schema_version(db) == str(SCHEMA_VERSION)
    finally:
        s.close()


def test_a_version_9_database_gets_the_name_index(db: Path) -> None:
    # Given a database as dts left it at schema version 9 (before the dashboard's name filter)
    SqliteStore(str(db)).close()
    conn = sqlite3.connect(db)
    conn.execute("DROP INDEX jobs_by_name")
    before_version_12(conn)
    conn.execute("UPDATE meta SET value = '9' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    # When this dts opens it, then the index is there and the schema is current
    SqliteStore(str(db)).close()
    conn = sqlite3.connect(db)
    try:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM jobs"
            f" WHERE name = 'a' AND {NAMED} AND id < 5 ORDER BY id DESC"
        ).fetchall()
    finally:
        conn.close()
    assert "jobs_by_name" in str(plan)
    assert schema_version(db) == str(SCHEMA_VERSION) == "12"


def test_newer_schema_version_is_refused(db: Path) -> None:
    SqliteStore(str(db)).close()
    conn = sqlite3.connect(db)
    conn.execute(
        "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
    )
    conn.commit()
    conn.close()
    with pytest.raises(Internal, match=f"schema version {SCHEMA_VERSION + 1}"):
        SqliteStore(str(db))
    assert schema_version(db) == str(SCHEMA_VERSION + 1)  # left as it was


def test_unopenable_path_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(Unavailable, match="cannot open database"):
        SqliteStore(str(blocker / "dts.db"))


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    """Set this process's umask for a test; the old one comes back after it."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o277], ids=["000", "022", "277"])
def test_a_new_database_and_its_wal_and_shm_are_private_whatever_the_umask(
    db: Path, umask: Callable[[int], int], mask: int
) -> None:
    # Given a umask that would leave new files readable by others (or not even writable)
    umask(mask)
    # When a store creates its database and writes to it
    s = SqliteStore(str(db))
    try:
        add(s, spec("secret", env=(("TOKEN", "t"),)))
        # Then the database and the WAL files SQLite made beside it are the owner's alone
        files = [db, db.with_name("dts.db-wal"), db.with_name("dts.db-shm")]
        assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {
            f.name: 0o600 for f in files
        }
    finally:
        s.close()


def test_open_directory_and_loose_existing_files_are_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a private directory: a new database there gets no warning
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with caplog.at_level(logging.WARNING, "dts.store"):
        SqliteStore(str(private / "dts.db")).close()
    assert caplog.messages == []
    # Given a database left readable by others, in a directory others may list and enter
    (private / "dts.db").chmod(0o644)
    private.chmod(0o755)
    # When a store opens it
    with caplog.at_level(logging.WARNING, "dts.store"):
        SqliteStore(str(private / "dts.db")).close()
    # Then it says so, and leaves the file's mode as the operator set it
    db = private / "dts.db"
    assert caplog.messages == [
        f"database files can be read by other users: {db} (mode 0644), {db}-wal (mode 0644),"
        f" {db}-shm (mode 0644); chmod 600 them",
        f"the database's directory {private} is open to other users (mode 0755): chmod o-rwx it",
    ]
    assert stat.S_IMODE(db.stat().st_mode) == 0o644


def test_sql_metacharacters_round_trip(store: SqliteStore, db: Path) -> None:
    hostile = spec(
        "sh",
        NASTY,
        '"quoted" `tick` $x \\ % _ \u0000-free \u2603 \U0001f600',
        env=((NASTY, NASTY), ("Q", "' OR 1=1 --")),
        cwd=f"/tmp/{NASTY}",
        name=NASTY + ' "; DELETE FROM attempts; --',
        queue="q",
    )
    (job,) = add(store, hostile)
    claim(store, job, NASTY, 1.0)  # the job's worker and its attempt's are NASTY
    with store.transaction() as tx:
        tx.update_job(replace(job, status=S.RUNNING, attempts=1, error=NASTY, worker=NASTY))
        tx.save_worker(
            WorkerInfo(NASTY, NASTY, 1, NASTY, 1, (NASTY,), WorkerState.IDLE, 0, 1.0, 1.0)
        )
        tx.finish_attempt(
            Attempt(job.id, 1, NASTY, 1.0, 2.0, 1, Outcome.FAILED, NASTY),
            Output(1, NASTY.encode(), b""),
        )
    got = store.get_job(job.id)
    assert got is not None
    assert got.spec == hostile
    assert got.spec.argv[1].encode() == NASTY.encode()
    assert (got.error, got.worker) == (NASTY, NASTY)
    assert store.list_jobs(JobFilter(queue="q")) == [got]
    assert store.workers()[0].name == NASTY
    assert store.attempts(job.id)[0].error == NASTY
    assert store.output(job.id, 1) == Output(1, NASTY.encode(), b"")
    conn = sqlite3.connect(db)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert {"jobs", "attempts", "workers", "meta"} <= tables


def test_concurrent_transactions_from_threads(store: SqliteStore) -> None:
    ids: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(50):
                (job,) = add(store, spec(f"t{n}-{i}"))
                with lock:
                    ids.append(job.id)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(ids) == len(set(ids)) == 200
    assert len(store.list_jobs(JobFilter(limit=1000))) == 200


def test_claims_in_bulk_keep_the_order_taken_and_only_take_queued_jobs(
    store: SqliteStore,
) -> None:
    from dts.server.store.sqlite import BATCH_ROWS

    # Given more queued jobs than one statement takes, and one that is not queued
    jobs = add(store, *[spec(f"job{i}") for i in range(BATCH_ROWS + 50)])
    held = add_scheduled(store, "scheduled", 500.0)
    wanted = [j.id for j in reversed(jobs)] + [held.id, jobs[0].id]  # a duplicate too
    # When a worker claims them in an order of its own
    with store.transaction() as tx:
        claimed = tx.claim_queued(wanted, "w1", ["default"], 200.0, 230.0)
    # Then every queued one is claimed once, in that order, as attempt 1 with its spec
    assert [a.job_id for a in claimed] == [j.id for j in reversed(jobs)]
    assert {a.attempt for a in claimed} == {1}
    assert claimed[-1].spec == jobs[0].spec
    after = store.get_job(jobs[0].id)
    assert after is not None and (after.status, after.worker, after.attempts) == (
        S.RUNNING,
        "w1",
        1,
    )
    assert store.attempts(jobs[0].id)[0].outcome is Outcome.RUNNING
    assert store.get_job(held.id).status is S.SCHEDULED  # type: ignore[union-attr]


def test_a_claim_takes_only_jobs_of_the_queues_given(store: SqliteStore) -> None:
    # Given queued jobs of three queues
    mine, other, also = add(store, spec(queue="fq"), spec(queue="secretq"), spec(queue="b"))
    # When a worker of queues fq and b claims all three
    with store.transaction() as tx:
        claimed = tx.claim_queued([other.id, mine.id, also.id], "w1", ["fq", "b"], 1.0, 2.0)
    # Then it gets the jobs of its queues, and the other one stays queued with no attempt
    assert [a.job_id for a in claimed] == [mine.id, also.id]
    assert store.get_job(other.id) == other
    assert store.attempts(other.id) == []


def test_successes_in_bulk_are_fenced_and_keep_their_output(store: SqliteStore) -> None:
    jobs = add(store, *[spec(f"job{i}") for i in range(4)])
    with store.transaction() as tx:
        tx.claim_queued([j.id for j in jobs], "w1", ["default"], 200.0, 230.0)
    a, b, c, d = (j.id for j in jobs)
    results = [
        Result(a, 1, Outcome.SUCCEEDED, 0),  # quiet
        Result(b, 1, Outcome.SUCCEEDED, 0, stdout=b"out", stderr=b"err"),
        Result(c, 2, Outcome.SUCCEEDED, 0),  # a stale attempt
        Result(d, 1, Outcome.SUCCEEDED, 0, stdout=b"x"),
    ]
    with store.transaction() as tx:
        recorded = tx.finish_succeeded("w1", results, 300.0)
        assert tx.finish_succeeded("intruder", [Result(d, 1, Outcome.SUCCEEDED, 0)], 1) == {}
    assert set(recorded) == {(a, 1), (b, 1), (d, 1)}  # each with its queue:
    assert {store.get_job(i).spec.queue for i, _ in recorded} == set(recorded.values())  # type: ignore[union-attr]
    assert store.get_job(c).status is S.RUNNING  # type: ignore[union-attr]
    for job_id, out, err in ((a, b"", b""), (b, b"out", b"err"), (d, b"x", b"")):
        job = store.get_job(job_id)
        assert job is not None and (job.status, job.exit_code, job.finished_at) == (
            S.SUCCEEDED,
            0,
            300.0,
        )
        (attempt,) = store.attempts(job_id)
        assert (attempt.outcome, attempt.finished_at, attempt.exit_code) == (
            Outcome.SUCCEEDED,
            300.0,
            0,
        )
        assert store.output(job_id, 1) == Output(1, out, err)


# ---- statuses in the SQL, against the domain ----------------------------------------------------

# The partial indexes as databases have them today. SQLite keeps an index's DDL (less IF NOT
# EXISTS) in sqlite_master, so building it from JobStatus must not change a byte of it.
PARTIAL_INDEXES = {
    "jobs_due": "CREATE INDEX IF NOT EXISTS jobs_due ON jobs (run_at) WHERE status = 'scheduled'",
    "jobs_leases": (
        "CREATE INDEX IF NOT EXISTS jobs_leases ON jobs (lease_expires_at) WHERE status = 'running'"
    ),
    "jobs_running_by_worker": (
        "CREATE INDEX IF NOT EXISTS jobs_running_by_worker ON jobs (worker)"
        " WHERE status = 'running'"
    ),
    "jobs_unique": (
        "CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique ON jobs (queue, unique_key)"
        " WHERE unique_key IS NOT NULL AND status IN ('waiting', 'scheduled', 'queued', 'running')"
    ),
    "jobs_finished": (
        "CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at)"
        " WHERE finished_at IS NOT NULL"
    ),
    "jobs_running_by_queue": (  # version 8: a queue's running jobs, counted for its limit
        "CREATE INDEX IF NOT EXISTS jobs_running_by_queue ON jobs (queue) WHERE status = 'running'"
    ),
    "jobs_by_due_time": (
        "CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_due_time ON jobs (schedule, due_at)"
        " WHERE schedule IS NOT NULL"
    ),
    "jobs_by_schedule": (
        "CREATE INDEX IF NOT EXISTS jobs_by_schedule ON jobs (schedule, id)"
        " WHERE schedule IS NOT NULL"
    ),
    "jobs_by_name": (  # version 11: the dashboard's name filter; unnamed jobs are not in it
        "CREATE INDEX IF NOT EXISTS jobs_by_name ON jobs (name, id) WHERE name <> ''"
    ),
}


def test_the_partial_indexes_keep_the_ddl_text_databases_have(store: SqliteStore, db: Path) -> None:
    assert [ddl for ddl in SCHEMA if " WHERE " in ddl] == list(PARTIAL_INDEXES.values())
    conn = sqlite3.connect(db)
    try:
        stored = dict(
            conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql LIKE '% WHERE %'"
            ).fetchall()
        )
    finally:
        conn.close()
    assert stored == {
        name: ddl.replace(" IF NOT EXISTS", "") for name, ddl in PARTIAL_INDEXES.items()
    }


def test_a_unique_key_is_held_by_exactly_the_statuses_that_are_not_final() -> None:
    held = {s for s in JobStatus if f"'{s.value}'" in UNIQUE_HELD}
    assert held == {s for s in JobStatus if not s.final}


def test_every_status_change_the_store_makes_in_bulk_is_one_the_domain_allows() -> None:
    assert set(BULK_MOVES) == {CLAIM, FINISH}
    for old, new in BULK_MOVES:
        assert can_transition(old, new), f"the store moves jobs from {old} to {new} in bulk"


def stored_statuses(db: Path, ids: list[int]) -> list[str]:
    """The status text of jobs `ids` as the database holds it, read past the store."""
    conn = sqlite3.connect(db)
    try:
        return [
            conn.execute("SELECT status FROM jobs WHERE id = ?", (i,)).fetchone()[0] for i in ids
        ]
    finally:
        conn.close()


def test_a_bulk_claim_and_a_bulk_finish_make_the_moves_they_declare(
    store: SqliteStore, db: Path
) -> None:
    # Given queued jobs, and a scheduled one
    ids = [j.id for j in add(store, *(spec(f"j{i}") for i in range(4)))]
    held = add_scheduled(store, "held", 500.0)
    assert stored_statuses(db, ids) == [CLAIM[0].value] * 4 == ["queued"] * 4
    # When a worker claims them all in bulk
    with store.transaction() as tx:
        claimed = tx.claim_queued([*ids, held.id], "w1", ["default"], 200.0, 230.0)
    # Then the queued ones made the claim's move, and the scheduled one stayed
    assert stored_statuses(db, ids) == [CLAIM[1].value] * 4 == ["running"] * 4
    assert stored_statuses(db, [held.id]) == ["scheduled"]
    # When it reports two of them succeeded, in bulk
    ok = [Result(a.job_id, a.attempt, Outcome.SUCCEEDED, 0) for a in claimed[:2]]
    with store.transaction() as tx:
        assert tx.finish_succeeded("w1", ok, 300.0) == {
            (a.job_id, 1): "default" for a in claimed[:2]
        }
    # Then those two made the finish's move, and the other two are still running
    assert stored_statuses(db, ids) == [FINISH[1].value] * 2 + [FINISH[0].value] * 2
    assert stored_statuses(db, ids) == ["succeeded"] * 2 + ["running"] * 2


def test_a_soft_transaction_commits_and_leaves_the_store_durable(db: Path) -> None:
    s = SqliteStore(str(db), synchronous="full")
    try:
        with s.transaction(durable=False) as tx:
            (job,) = tx.insert_jobs([spec("soft")], 1.0)
        assert s.get_job(job.id) == job
        # the next transactions sync again (2 is FULL), also after a soft one that failed
        assert s._all("PRAGMA synchronous")[0][0] == 2
        with pytest.raises(RuntimeError), s.transaction(durable=False):
            raise RuntimeError("boom")
        assert s._all("PRAGMA synchronous")[0][0] == 2
    finally:
        s.close()


def test_a_version_7_database_gets_dependencies(db: Path) -> None:
    # Given a database as dts left it at schema version 7 (before dependencies)
    SqliteStore(str(db)).close()
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE dependencies")
    conn.execute("DROP INDEX jobs_unique")
    conn.execute(
        "CREATE UNIQUE INDEX jobs_unique ON jobs (queue, unique_key)"
        " WHERE unique_key IS NOT NULL AND status IN ('scheduled', 'queued', 'running')"
    )
    before_version_12(conn)
    conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    # When this dts opens it, then a job can wait for another and holds its unique key
    s = SqliteStore(str(db))
    try:
        with s.transaction() as tx:
            (first,) = tx.insert_jobs([spec("a")], 1.0)
            (second,) = tx.insert_jobs([spec("b", after=(first.id,), unique="k")], 1.0)
            tx.add_dependencies([(second.id, first.id, "succeeded")])
            assert second.status is S.WAITING
            assert tx.insert_unique(spec("c", unique="k"), 2.0).existing
        assert s.dependencies(second.id)[0][0].job_id == first.id
    finally:
        s.close()
    assert schema_version(db) == str(SCHEMA_VERSION) == "12"
