"""The purge of old final jobs, on every store (the `store` fixture): only final jobs that
finished before the cut-off, by status and queue, with their attempts, output and submit keys,
at most a batch at a time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dts.domain import Job, JobFilter, JobSpec, JobStatus, Outcome, Output
from dts.errors import Internal
from dts.server.store import Store

S = JobStatus


def make(store: Store, status: JobStatus, finished_at: float | None, queue: str = "q") -> Job:
    """A job that ran once (its attempt printed something) and is now `status`, finished at
    `finished_at` (set even on a job that is not final, to show the status decides)."""
    with store.transaction() as tx:
        (job,) = tx.insert_jobs([JobSpec(argv=("echo", "hi"), queue=queue)], 10.0)
        (taken,) = tx.claim_queued([job.id], "w", [queue], 11.0, 40.0)
        attempt = tx.get_attempt(job.id, taken.attempt)
        assert attempt is not None
        done = replace(attempt, finished_at=12.0, exit_code=0, outcome=Outcome.SUCCEEDED)
        tx.finish_attempt(done, Output(1, b"out", b"err"))
        current = tx.get_job(job.id)
        assert current is not None
        moved = replace(current, status=status, finished_at=finished_at)
        tx.update_job(moved)
    return moved


def gone(store: Store, job: Job) -> bool:
    return (
        store.get_job(job.id) is None
        and store.attempts(job.id) == []
        and store.output(job.id, 1) is None
    )


def kept(store: Store, job: Job) -> bool:
    return store.get_job(job.id) is not None and store.output(job.id, 1) is not None


def test_only_final_jobs_are_purged(store: Store) -> None:
    # Given a job in every status, each with a finished_at long before the cut-off
    jobs = {status: make(store, status, 50.0) for status in S}
    # When every final job older than 100 is purged
    n = store.purge(100.0, (), "", 500)
    # Then the succeeded, failed and cancelled ones are gone with their attempts and output
    assert n == 3
    for status, job in jobs.items():
        if status.final:
            assert gone(store, job), status
        else:
            assert kept(store, job), status


def test_the_cut_off_is_respected(store: Store) -> None:
    old = make(store, S.SUCCEEDED, 99.0)
    at_cut = make(store, S.SUCCEEDED, 100.0)
    young = make(store, S.FAILED, 150.0)
    assert store.purge(100.0, (), "", 500) == 1
    assert gone(store, old)
    assert kept(store, at_cut) and kept(store, young)  # finished at the cut-off: not before it


def test_the_status_and_queue_filters(store: Store) -> None:
    # Given old final jobs of two statuses in two queues
    a_ok = make(store, S.SUCCEEDED, 1.0, queue="a")
    a_failed = make(store, S.FAILED, 1.0, queue="a")
    b_failed = make(store, S.FAILED, 1.0, queue="b")
    b_cancelled = make(store, S.CANCELLED, 1.0, queue="b")
    # When the failed ones of queue b are purged, then only that one goes
    assert store.purge(100.0, [S.FAILED], "b", 500) == 1
    assert gone(store, b_failed)
    assert kept(store, a_ok) and kept(store, a_failed) and kept(store, b_cancelled)
    # When the failed and cancelled ones of every queue are purged, then the succeeded stays
    assert store.purge(100.0, [S.FAILED, S.CANCELLED], "", 500) == 2
    assert gone(store, a_failed) and gone(store, b_cancelled) and kept(store, a_ok)
    # And a queue with nothing old purges nothing
    assert store.purge(100.0, (), "c", 500) == 0
    assert kept(store, a_ok)


def test_a_purge_deletes_at_most_a_batch(store: Store) -> None:
    jobs = [make(store, S.SUCCEEDED, 1.0) for _ in range(7)]
    assert [store.purge(100.0, (), "", 3) for _ in range(4)] == [3, 3, 1, 0]
    assert all(gone(store, j) for j in jobs)
    assert store.list_jobs(JobFilter()) == []


def test_a_purged_job_takes_its_submit_key_along(store: Store) -> None:
    # Given two submits with keys: one whose job gets purged, one whose job stays running
    with store.transaction() as tx:
        assert tx.take_submit_key("old", 10.0) is None
        (job,) = tx.insert_jobs([JobSpec(argv=("true",), queue="q")], 10.0)
        tx.record_submit_key("old", [job.id])
        assert tx.take_submit_key("live", 10.0) is None
        (live,) = tx.insert_jobs([JobSpec(argv=("true",), queue="q")], 10.0)
        tx.record_submit_key("live", [live.id])
        tx.update_job(replace(job, status=S.SUCCEEDED, finished_at=20.0))
    # When the finished one is purged
    assert store.purge(100.0, (), "", 500) == 1
    # Then its key names nothing any more (a retry of that submit stores it anew), and the
    # other submit's key still answers with its job
    with store.transaction() as tx:
        assert tx.take_submit_key("old", 200.0) is None
        assert tx.take_submit_key("live", 200.0) == [live.id]


def test_a_status_that_is_not_final_is_refused(store: Store) -> None:
    job = make(store, S.QUEUED, 1.0)
    with pytest.raises(Internal, match="not final"):
        store.purge(100.0, [S.QUEUED], "", 500)
    assert kept(store, job)
