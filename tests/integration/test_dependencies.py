"""Job dependencies on each store (SQLite, PostgreSQL) through the coordinator and a real
redis-server (no gRPC): waiting, release, cascades, retries, submit checks, retention; and two
servers' stores ending two dependencies of one job at once on one PostgreSQL database."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest

from dts.domain import Dependency, JobSpec, JobStatus, Outcome, Result
from dts.errors import FailedPrecondition, InvalidArgument
from dts.server.dependencies import settle
from dts.server.store import Store
from dts.server.store.postgres import PostgresStore
from tests.harness import RedisProcess, wait_until
from tests.integration.test_coordinator import Env, coordinator_env, spec

S = JobStatus


@pytest.fixture
def env(store: Store, redis_proc: RedisProcess) -> Iterator[Env]:
    yield coordinator_env(store, redis_proc, max_lost=1)


def status(env: Env, job_id: int) -> tuple[JobStatus, str]:
    job = env.c.get(job_id)
    return job.status, job.error


def run(env: Env, job_id: int, outcome: Outcome = Outcome.SUCCEEDED) -> None:
    """A worker claims job `job_id` and reports `outcome`."""
    session = env.sessions.get("w1") or env.worker()
    assert [a.job_id for a in env.claim("w1", session, [job_id])] == [job_id]
    job = env.c.get(job_id)
    code = 0 if outcome is Outcome.SUCCEEDED else 1
    assert env.report("w1", [Result(job_id, job.attempts, outcome, code)]) == [(True, "")]


def test_a_job_waits_until_its_dependency_succeeded(env: Env) -> None:
    # Given a job and one that runs after it
    (a,) = env.c.submit([spec()])
    (b,) = env.c.submit([spec(after=(a.id,))])
    # Then the second waits, and is not in Redis
    assert b.status is S.WAITING and status(env, b.id) == (S.WAITING, "")
    assert env.q.pop(["default"], 10, 30) == [a.id]
    env.q.ack([a.id])
    # When the first succeeds (the bulk path of a worker's report)
    session = env.worker()
    assert [x.job_id for x in env.claim("w1", session, [a.id])] == [a.id]
    env.report("w1", [Result(a.id, 1, Outcome.SUCCEEDED, 0)])
    # Then the second is queued, and its id is in Redis
    assert status(env, b.id) == (S.QUEUED, "")
    assert env.q.pop(["default"], 10, 30) == [b.id]


def test_a_failed_dependency_cancels_the_chain_after_it(env: Env) -> None:
    (a,) = env.c.submit([spec()])
    (b,) = env.c.submit([spec(after=(a.id,))])
    (c,) = env.c.submit([spec(after=(b.id,))])
    run(env, a.id, Outcome.FAILED)
    assert status(env, a.id)[0] is S.FAILED
    assert status(env, b.id) == (S.CANCELLED, f"dependency {a.id} failed")
    assert status(env, c.id) == (S.CANCELLED, f"dependency {b.id} cancelled")


def test_after_finished_runs_after_a_failure(env: Env) -> None:
    (a,) = env.c.submit([spec()])
    (b,) = env.c.submit([spec(after_finished=(a.id,))])
    run(env, a.id, Outcome.FAILED)
    assert status(env, b.id) == (S.QUEUED, "")


def test_both_kinds_together_wait_for_both(env: Env) -> None:
    (a,) = env.c.submit([spec()])
    (b,) = env.c.submit([spec()])
    (c,) = env.c.submit([spec(after=(a.id,), after_finished=(b.id,))])
    run(env, a.id)
    assert status(env, c.id)[0] is S.WAITING  # b is not final yet
    run(env, b.id, Outcome.FAILED)
    assert status(env, c.id)[0] is S.QUEUED


def test_a_release_with_its_delay_ahead_is_scheduled(env: Env) -> None:
    (a,) = env.c.submit([spec()])
    (b,) = env.c.submit([spec(after=(a.id,), delay=60.0)])
    assert b.run_at == env.clock.now + 60.0
    run(env, a.id)
    job = env.c.get(b.id)
    assert (job.status, job.run_at) == (S.SCHEDULED, b.run_at)
    env.clock.now += 61
    assert env.c.promote_due() == 1 and status(env, b.id)[0] is S.QUEUED


def test_a_dependency_final_at_submit_is_judged_at_once(env: Env) -> None:
    (ok,) = env.c.submit([spec()])
    run(env, ok.id)
    (bad,) = env.c.submit([spec()])
    run(env, bad.id, Outcome.FAILED)
    (after_ok,) = env.c.submit([spec(after=(ok.id,))])
    (after_bad,) = env.c.submit([spec(after=(bad.id,))])
    (finished_bad,) = env.c.submit([spec(after_finished=(bad.id,))])
    assert after_ok.status is S.QUEUED and status(env, after_ok.id)[0] is S.QUEUED
    assert after_bad.status is S.CANCELLED
    assert status(env, after_bad.id) == (S.CANCELLED, f"dependency {bad.id} failed")
    assert status(env, finished_bad.id)[0] is S.QUEUED


def test_cancel_cascades_to_the_waiting_jobs(env: Env) -> None:
    (a,) = env.c.submit([spec()])
    (b,) = env.c.submit([spec(after=(a.id,))])
    (c,) = env.c.submit([spec(after_finished=(b.id,))])
    (d,) = env.c.submit([spec(after=(b.id,))])
    env.c.cancel(a.id)
    assert status(env, b.id) == (S.CANCELLED, f"dependency {a.id} cancelled")
    assert status(env, c.id)[0] is S.QUEUED  # it asked only for b's end
    assert status(env, d.id) == (S.CANCELLED, f"dependency {b.id} cancelled")
    # a waiting job cancelled by a user takes its own dependents with it
    (e,) = env.c.submit([spec(after=(c.id,))])
    (f,) = env.c.submit([spec(after=(e.id,))])
    env.c.cancel(e.id)
    assert status(env, f.id) == (S.CANCELLED, f"dependency {e.id} cancelled")


def test_a_lost_dependency_with_no_tries_left_cascades(env: Env) -> None:
    (a,) = env.c.submit([spec()])
    (b,) = env.c.submit([spec(after=(a.id,))])
    session = env.worker()
    assert [x.job_id for x in env.claim("w1", session, [a.id])] == [a.id]
    env.clock.now += 60  # the lease ran out; max_lost is 1
    env.c.reap_leases()
    assert status(env, a.id)[0] is S.FAILED
    assert status(env, b.id) == (S.CANCELLED, f"dependency {a.id} failed")


def test_retry_waits_again_until_the_dependency_is_retried_and_succeeds(env: Env) -> None:
    # Given a failed dependency and its cancelled dependent
    (a,) = env.c.submit([spec()])
    (b,) = env.c.submit([spec(after=(a.id,))])
    run(env, a.id, Outcome.FAILED)
    # When the dependent is retried first, it waits (its dependency is still failed)
    assert env.c.retry(b.id).status is S.WAITING
    assert status(env, b.id)[0] is S.WAITING
    # And when the dependency is retried and succeeds, the dependent is queued
    assert env.c.retry(a.id).status is S.QUEUED
    assert status(env, b.id)[0] is S.WAITING
    run(env, a.id)
    assert status(env, b.id)[0] is S.QUEUED
    # A retry after the dependency succeeded is queued at once
    run(env, b.id, Outcome.FAILED)
    assert env.c.retry(b.id).status is S.QUEUED


def test_a_retried_dependent_is_cancelled_when_its_retried_dependency_fails_again(
    env: Env,
) -> None:
    (a,) = env.c.submit([spec()])
    (b,) = env.c.submit([spec(after=(a.id,))])
    run(env, a.id, Outcome.FAILED)
    env.c.retry(b.id)
    env.c.retry(a.id)
    run(env, a.id, Outcome.FAILED)
    assert status(env, b.id) == (S.CANCELLED, f"dependency {a.id} failed")


def test_a_submit_with_steps_links_them(env: Env) -> None:
    first, second, third = env.c.submit(
        [spec(name="a"), spec(name="b", steps=(0,)), spec(name="c", steps_finished=(1,))]
    )
    assert [first.status, second.status, third.status] == [S.QUEUED, S.WAITING, S.WAITING]
    waits, waited = env.c.store.dependencies(second.id)
    assert waits == (Dependency(first.id, S.QUEUED, False),)
    assert waited == (Dependency(third.id, S.WAITING, True),)
    run(env, first.id, Outcome.FAILED)
    assert status(env, second.id)[0] is S.CANCELLED
    assert status(env, third.id)[0] is S.QUEUED


def test_bad_dependencies_are_refused_and_nothing_is_stored(env: Env) -> None:
    (a,) = env.c.submit([spec()])
    bad: list[tuple[list[JobSpec], str]] = [
        ([spec(after=(a.id + 1000,))], f"no job with id {a.id + 1000}"),
        ([spec(name="x", steps=(0,))], "x depends on itself"),
        ([spec(name="x", steps=(1,)), spec(name="y", steps=(0,))], "dependency cycle: x -> y -> x"),
        ([spec(name="x", steps=(5,))], "no step 6"),
        ([spec(after=tuple(range(1, 1002)))], "at most 1000"),
        ([spec(steps=(0,) if i else ()) for i in range(1001)], "at most 1000 steps"),
        ([spec(), spec(after=(a.id + 1000,))], "no job with id"),
    ]
    for specs, message in bad:
        with pytest.raises(InvalidArgument, match=message):
            env.c.submit(specs)
    assert [j.id for j in env.c.list_jobs(None, None, 100)] == [a.id]


def test_purge_keeps_a_dependency_of_a_waiting_job_and_a_retry_needs_it(env: Env) -> None:
    (a,) = env.c.submit([spec()])
    (b,) = env.c.submit([spec(after=(a.id,))])
    run(env, a.id, Outcome.FAILED)
    env.c.retry(b.id)  # b waits for a to be retried
    later = env.clock.now + 1000
    assert env.c.store.purge(later, (), "", 100) == 0  # a is kept: b waits for it
    env.c.cancel(b.id)
    assert env.c.store.purge(later, (), "", 100) == 2  # both final now: a and b go
    (c,) = env.c.submit([spec()])
    (d,) = env.c.submit([spec(after=(c.id,))])
    run(env, c.id, Outcome.FAILED)
    env.clock.now += 10
    # only failed jobs are purged: c goes, and d (cancelled) keeps its edge to it
    assert env.c.store.purge(env.clock.now, (S.FAILED,), "", 100) == 1
    assert env.c.store.dependencies(d.id)[0] == (Dependency(c.id, None, False),)
    with pytest.raises(FailedPrecondition, match=f"job {c.id}, which is deleted"):
        env.c.retry(d.id)


def test_a_waiting_job_holds_its_unique_key(env: Env) -> None:
    (a,) = env.c.submit([spec()])
    (b,) = env.c.submit([spec(after=(a.id,), unique="k")])
    (again,) = env.c.submit([spec(unique="k")])
    assert (again.id, again.existing, again.status) == (b.id, True, S.WAITING)


# ---- several servers on one PostgreSQL database ----------------------------------------------


def test_two_dependencies_ending_at_once_through_two_servers_queue_the_job_once(
    postgres_url: str,
) -> None:
    """Server A ends dependency 1 and holds the dependent's row; server B ends dependency 2 and
    waits for that row. A sees 2 still running (not committed): the job stays waiting; B then
    reads 1's committed end and releases it. Exactly one release, none missed."""
    one, two = PostgresStore(postgres_url), PostgresStore(postgres_url)
    try:
        with one.transaction() as tx:
            d1, d2 = tx.insert_jobs([spec(), spec()], 100.0)
            (x,) = tx.insert_jobs([spec(after=(d1.id, d2.id))], 100.0)
            tx.add_dependencies([(x.id, d1.id, "succeeded"), (x.id, d2.id, "succeeded")])
            for d in (d1, d2):
                tx.update_job(replace(d, status=S.RUNNING, attempts=1, worker="w"))
        released: list[list[JobStatus]] = []

        def end(store: PostgresStore, dep_id: int, hold: threading.Event | None) -> None:
            with store.transaction() as tx:
                dep = tx.get_job(dep_id)
                assert dep is not None
                tx.update_job(replace(dep, status=S.SUCCEEDED, finished_at=101.0))
                released.append([j.status for j in settle(tx, [dep_id], 101.0)])
                if hold is not None:
                    hold.wait(30)

        hold = threading.Event()
        a = threading.Thread(target=end, args=(one, d1.id, hold))
        a.start()
        wait_until(lambda: len(released) == 1, 10, what="server A settled its dependency")
        b = threading.Thread(target=end, args=(two, d2.id, None))
        b.start()
        with psycopg.connect(postgres_url, autocommit=True) as probe:
            wait_until(
                lambda: (
                    probe.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    ).fetchone()
                    == (1,)
                ),
                10,
                what="server B waits for the dependent's row",
            )
        hold.set()
        a.join(10)
        b.join(10)
        assert released == [[], [S.QUEUED]]
        job = one.get_job(x.id)
        assert job is not None and job.status is S.QUEUED
    finally:
        one.close()
        two.close()


def test_a_step_with_a_failed_dependency_outside_its_submit_is_cancelled_at_once(
    env: Env,
) -> None:
    (bad,) = env.c.submit([spec()])
    run(env, bad.id, Outcome.FAILED)
    (ok,) = env.c.submit([spec()])
    run(env, ok.id)
    first, second, third = env.c.submit(
        [spec(), spec(steps=(0,), after=(bad.id,)), spec(steps=(0,), after=(ok.id,))]
    )
    assert status(env, second.id) == (S.CANCELLED, f"dependency {bad.id} failed")
    assert second.status is S.CANCELLED
    assert status(env, third.id)[0] is S.WAITING  # ok succeeded; the step has not run yet
    run(env, first.id)
    assert status(env, third.id)[0] is S.QUEUED


def test_a_timed_out_dependency_cancels_its_dependent(env: Env) -> None:
    (a,) = env.c.submit([spec()])
    (b,) = env.c.submit([spec(after=(a.id,))])
    run(env, a.id, Outcome.TIMED_OUT)
    assert status(env, a.id)[0] is S.FAILED
    assert status(env, b.id) == (S.CANCELLED, f"dependency {a.id} failed")


def test_a_chain_of_a_thousand_steps_is_one_submit_and_cancels_whole(env: Env) -> None:
    jobs = env.c.submit([spec(steps=(i - 1,) if i else ()) for i in range(1000)])
    assert [j.status for j in jobs] == [S.QUEUED] + [S.WAITING] * 999
    env.c.cancel(jobs[0].id)
    ended = env.c.list_jobs(S.CANCELLED, None, 2000)
    assert len(ended) == 1000
    assert status(env, jobs[-1].id) == (S.CANCELLED, f"dependency {jobs[-2].id} cancelled")
