"""A purged job on each store and a real Redis: whoever still names it (a worker reporting or
renewing it, its id left in Redis, a waiter, a retried submit) is answered, nothing breaks."""

from __future__ import annotations

import pytest

from dts.domain import JobStatus, Lease, Outcome, Result
from dts.errors import NotFound
from dts.server.retention import PurgeOrder, Retention
from tests.integration.test_coordinator import Env, env, spec  # noqa: F401 (the fixture)


def purge_everything_final(e: Env) -> int:
    """Purge every final job, as seen an hour from now."""
    e.clock.now += 3600
    purged, more = Retention(e.c.store, e.c.clock).purge(PurgeOrder(60.0))
    assert not more
    return purged


def test_a_worker_reporting_a_purged_job_gets_a_refused_ack(env: Env) -> None:  # noqa: F811
    # Given a running job that a user cancels, and that is then purged
    job = env.c.submit([spec()])[0]
    session = env.worker()
    assert env.take("w1", session) == [job.id]
    env.c.cancel(job.id)
    assert purge_everything_final(env) == 1
    # When its worker renews its lease: it is told to stop it
    stop, _ = env.c.heartbeat("w1", session, [Lease(job.id, 1)], False)
    assert stop == [Lease(job.id, 1)]
    # When its worker reports its end: refused, and the job stays gone
    done = Result(job.id, 1, Outcome.CANCELLED, 143, "cancelled", b"partial")
    assert env.report("w1", [done]) == [(False, f"no job with id {job.id}")]
    succeeded = Result(job.id, 1, Outcome.SUCCEEDED, 0)
    assert env.report("w1", [succeeded]) == [(False, f"no job with id {job.id}")]
    with pytest.raises(NotFound, match=f"no job with id {job.id}"):
        env.c.get(job.id)
    # And the worker goes on: a new job is claimed and reported as usual
    (new,) = env.c.submit([spec()])
    assert env.take("w1", session) == [new.id]
    assert env.report("w1", [Result(new.id, 1, Outcome.SUCCEEDED, 0)]) == [(True, "")]


def test_a_purged_id_left_in_redis_is_skipped(env: Env) -> None:  # noqa: F811
    # Given a queued job cancelled and purged while its id is still in Redis
    job = env.c.submit([spec()])[0]
    env.c.cancel(job.id)
    assert purge_everything_final(env) == 1
    # Then the reconciler has nothing to put back, and a worker taking the id claims nothing
    assert env.c.reconcile() == 0
    session = env.worker()
    assert env.take("w1", session) == []
    # And reading it, its history, its logs or waiting for it says it is not there
    for read in (env.c.get, env.c.history, lambda i: env.c.logs(i, 0), lambda i: env.c.wait(i, 0)):
        with pytest.raises(NotFound, match=f"no job with id {job.id}"):
            read(job.id)


def test_a_submit_retried_after_its_jobs_were_purged_stores_them_anew(
    env: Env,  # noqa: F811
) -> None:
    (job,) = env.c.submit([spec()], key="k-1")
    env.c.cancel(job.id)
    assert purge_everything_final(env) == 1
    (again,) = env.c.submit([spec()], key="k-1")
    assert again.id > job.id and again.status is JobStatus.QUEUED
