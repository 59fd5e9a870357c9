"""`dts-server copy-history`: a SQLite history moved into PostgreSQL reads back the same, ids,
attempts and output kept; a target that is not empty is refused."""

from __future__ import annotations

import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from dts.domain import Attempt, JobFilter, JobSpec, JobStatus, Outcome, Output, Result
from dts.schedule import Schedule
from dts.server.history import ATTEMPT_COLUMNS, JOB_COLUMNS, row_values
from dts.server.store.postgres import PostgresStore
from dts.server.store.sqlite import SqliteStore
from tests.harness import BIN, clean_env

pytestmark = pytest.mark.single_store  # names its store itself: runs once

JOBS = 10_000
SCHEDULE = Schedule(
    "nightly", JobSpec(argv=("true",)), cron="0 3 * * *", tz="Europe/Paris", next_due=5.0
)


def copy_history(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dts-server"), "copy-history", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
    )


def make_history(path: Path) -> None:
    """10,000 jobs: queued, scheduled, succeeded with output, failed after a retry, running,
    two made by a schedule (which is copied too)."""
    store = SqliteStore(str(path))
    now = time.time()
    with store.transaction() as tx:
        specs = [
            JobSpec(argv=("echo", str(i)), name=f"j{i}", env=(("K", "v\x01'"),), max_retries=1)
            for i in range(JOBS - 100)
        ] + [JobSpec(argv=("sleep", "1"), delay=3600.0) for _ in range(98)]
        jobs = tx.insert_jobs(specs, now)
        tx.insert_schedule(SCHEDULE)
        tx.insert_schedule_jobs([SCHEDULE.spec] * 2, "nightly", [now - 60, None], now)
    ids = [j.id for j in jobs[: JOBS // 2]]
    with store.transaction() as tx:
        tx.claim_queued(ids, "w1", ["default"], now + 1, now + 31)
        done = [
            Result(i, 1, Outcome.SUCCEEDED, 0, "", f"out {i}\n".encode(), b"\xff\x00")
            for i in ids[: JOBS // 4]
        ]
        tx.finish_succeeded("w1", done, now + 2)
    failing = ids[JOBS // 4 : JOBS // 4 + 500]
    with store.transaction() as tx:  # a first attempt failed: queued again for its retry
        for i in failing:
            job = tx.get_job(i)
            assert job is not None
            tx.finish_attempt(
                Attempt(i, 1, "w1", now + 1, now + 3, 3, Outcome.FAILED, "exited with code 3"),
                Output(1, b"", b"boom\n"),
            )
            again = replace(job, status=JobStatus.QUEUED, failures=1, worker="", error="exit 3")
            tx.update_job(again)
    with store.transaction() as tx:
        tx.claim_queued(failing, "w2", ["default"], now + 4, now + 34)
    with store.transaction() as tx:  # the last scheduled ones wait for two jobs each
        tx.add_dependencies(
            [(j.id, d, kind) for j in jobs[-10:] for d, kind in ((1, "succeeded"), (2, "finished"))]
        )
    store.close()


def everything(store: SqliteStore | PostgresStore) -> tuple[list[object], list[object]]:
    p = store.PARAM
    jobs = store.read(f"SELECT {','.join(JOB_COLUMNS)} FROM jobs ORDER BY id LIMIT {p}", (JOBS,))
    tries = store.read(
        f"SELECT {','.join(ATTEMPT_COLUMNS)} FROM attempts ORDER BY job_id, attempt LIMIT {p}",
        (JOBS * 2,),
    )
    return [row_values(r, JOB_COLUMNS) for r in jobs], [
        row_values(r, ATTEMPT_COLUMNS) for r in tries
    ]


def test_a_sqlite_history_moves_into_postgresql_whole(tmp_path: Path, postgres_url: str) -> None:
    db = tmp_path / "dts.db"
    make_history(db)
    # When it is copied into an empty PostgreSQL database
    r = copy_history("--from", f"sqlite://{db}", "--to", postgres_url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"copied {JOBS} jobs and ")
    # Then every job and attempt, with its output, reads back the same
    source, target = SqliteStore(str(db)), PostgresStore(postgres_url)
    try:
        expected, got = everything(source), everything(target)
        assert len(expected[0]) == JOBS and len(expected[1]) == JOBS // 2 + 500
        assert got == expected
        assert target.output(1, 1) == Output(1, b"out 1\n", b"\xff\x00")
        # with the jobs' dependencies
        assert target.dependencies(JOBS) == source.dependencies(JOBS)
        assert len(target.dependencies(1)[1]) == 10
        # And the store carries on from there: a new job gets the next id
        with target.transaction() as tx:
            [new] = tx.insert_jobs([JobSpec(argv=("true",))], time.time())
        assert new.id == JOBS + 1
        assert len(target.list_jobs(JobFilter(JobStatus.SCHEDULED, None, 1000))) == 98
        assert target.schedules() == source.schedules() == [SCHEDULE]
        assert [j.schedule for j in target.schedule_jobs("nightly", 5)] == ["nightly"] * 2
    finally:
        source.close()
        target.close()
    # And a second copy into it is refused: it is not empty any more
    again = copy_history("--from", str(db), "--to", postgres_url)
    assert again.returncode == 1
    assert "is not empty" in again.stderr and again.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--from", "a.db"], "the following arguments are required: --to"),
        (["--from", "a.db", "--to", "a.db"], "--from and --to are the same store"),
        (["--from", "mysql://x/y", "--to", "b.db"], "unknown store mysql://"),
    ],
)
def test_bad_copy_arguments_are_one_line_and_exit_2(args: list[str], says: str) -> None:
    r = copy_history(*args)
    assert r.returncode == 2
    assert says in r.stderr and r.stderr.count("\n") == 1, r.stderr
