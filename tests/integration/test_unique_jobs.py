"""Unique jobs on each store (SQLite, PostgreSQL): the store's partial UNIQUE index and the
coordinator's rules around it (a real redis-server, no gRPC); and two servers' stores racing
for one key on one PostgreSQL database."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest

from dts.domain import JobSpec, JobStatus, Outcome, Result
from dts.errors import DtsError, FailedPrecondition, InvalidArgument
from dts.server.store import Store
from dts.server.store.postgres import PostgresStore
from tests.harness import RedisProcess
from tests.integration.test_coordinator import Env, coordinator_env


@pytest.fixture
def unique_env(store: Store, redis_proc: RedisProcess) -> Iterator[Env]:
    """The coordinator on each store in turn, and a real Redis."""
    yield coordinator_env(store, redis_proc)


def spec(*argv: str, **kw: object) -> JobSpec:
    """A spec with every default set, as a store keeps it."""
    full = {"max_retries": 0, "backoff": 0.0, "timeout": 0.0, **kw}
    return JobSpec(argv=argv or ("true",), **full)  # type: ignore[arg-type]


def stored(env: Env) -> list[tuple[int, str, str]]:
    """Every job as (id, queue, unique key), oldest first."""
    return sorted((j.id, j.spec.queue, j.spec.unique) for j in env.c.list_jobs(None, None, 1000))


# ---- the store ---------------------------------------------------------------------------------


def test_the_store_keeps_one_live_job_per_queue_and_key(store: Store) -> None:
    # Given a job with unique key k in queue a
    with store.transaction() as tx:
        first = tx.insert_unique(spec("echo", "1", queue="a", unique="k"), 100.0)
    assert (first.existing, first.status, first.spec.unique) == (False, JobStatus.QUEUED, "k")
    # When the key comes again in that queue, then that job is the answer, marked existing
    with store.transaction() as tx:
        again = tx.insert_unique(spec("echo", "2", queue="a", unique="k"), 101.0)
        assert tx.unique_holder("a", "k") == replace(again, existing=False)
    assert (again.id, again.existing, again.spec.argv) == (first.id, True, ("echo", "1"))
    # And in another queue the key makes a job of its own
    with store.transaction() as tx:
        other = tx.insert_unique(spec(queue="b", unique="k"), 102.0)
    assert not other.existing and other.id != first.id
    assert store.get_job(first.id) == first
    # When the first job is final, then the key is free in its queue again
    with store.transaction() as tx:
        tx.update_job(replace(first, status=JobStatus.CANCELLED, finished_at=103.0))
        assert tx.unique_holder("a", "k") is None
        third = tx.insert_unique(spec(queue="a", unique="k"), 104.0)
    assert not third.existing and third.id > other.id
    assert store.get_job(third.id) == third


def test_a_scheduled_job_holds_its_key(store: Store) -> None:
    with store.transaction() as tx:
        later = tx.insert_unique(spec(unique="k", delay=60.0), 100.0)
        again = tx.insert_unique(spec(unique="k"), 101.0)
    assert later.status is JobStatus.SCHEDULED and later.run_at == 160.0
    assert (again.id, again.existing, again.status) == (later.id, True, JobStatus.SCHEDULED)


def test_the_schema_itself_refuses_a_second_live_job_of_a_key(store: Store) -> None:
    """The rule is the database's (a partial UNIQUE index), not only the code's check: a
    plain insert of a second live job of the key fails and leaves nothing."""
    with store.transaction() as tx:
        (first,) = tx.insert_jobs([spec(unique="k")], 100.0)
    with pytest.raises((sqlite3.IntegrityError, DtsError)), store.transaction() as tx:
        tx.insert_jobs([spec(unique="k")], 101.0)
    # a retry of a final job moving back into the index meets it the same way
    with store.transaction() as tx:
        tx.update_job(replace(first, status=JobStatus.FAILED, finished_at=102.0))
        (second,) = tx.insert_jobs([spec(unique="k")], 103.0)
    with pytest.raises((sqlite3.IntegrityError, DtsError)), store.transaction() as tx:
        tx.update_job(replace(first, status=JobStatus.QUEUED, finished_at=None))
    held = store.get_job(first.id)
    assert held is not None and held.status is JobStatus.FAILED
    assert store.get_job(second.id) is not None


# ---- the coordinator -------------------------------------------------------------------------


def test_a_submit_with_a_live_key_gets_that_job_and_stores_nothing(unique_env: Env) -> None:
    env = unique_env
    # Given a job submitted with unique key nightly
    (first,) = env.c.submit([spec("echo", "1", unique="nightly")])
    assert not first.existing
    # When the key is submitted again, with another command
    (again,) = env.c.submit([spec("echo", "2", unique="nightly")])
    # Then the answer is the first job as it is, marked existing, and nothing new is stored
    assert (again.id, again.existing, again.spec.argv) == (first.id, True, ("echo", "1"))
    assert stored(env) == [(first.id, "default", "nightly")]
    # And its id went to Redis once
    assert env.q.pop(["default"], 10, 30) == [first.id]


def test_the_key_is_free_again_once_the_job_is_final(unique_env: Env) -> None:
    env = unique_env
    (first,) = env.c.submit([spec(unique="k")])
    session = env.worker()
    assert env.take("w1", session) == [first.id]
    # while it runs the key is taken
    (running,) = env.c.submit([spec(unique="k")])
    assert (running.id, running.existing, running.status) == (first.id, True, JobStatus.RUNNING)
    # When it succeeds, then a submit of the key makes a new job
    env.c.exchange("w1", session, [Result(first.id, 1, Outcome.SUCCEEDED, 0)], [])
    (second,) = env.c.submit([spec(unique="k")])
    assert not second.existing and second.id > first.id
    # And a cancelled job frees it too
    env.c.cancel(second.id)
    (third,) = env.c.submit([spec(unique="k")])
    assert not third.existing and third.id > second.id
    assert len(stored(env)) == 3


def test_keys_are_per_queue(unique_env: Env) -> None:
    env = unique_env
    a, b = env.c.submit([spec(queue="a", unique="k"), spec(queue="b", unique="k")])
    assert not a.existing and not b.existing and a.id != b.id
    (again,) = env.c.submit([spec(queue="b", unique="k")])
    assert again.id == b.id and again.existing


def test_a_key_twice_in_one_submit_makes_one_job(unique_env: Env) -> None:
    """The documented choice: the later spec of a (queue, key) in one batch gets the earlier
    one's job, marked existing; the batch is not refused."""
    env = unique_env
    jobs = env.c.submit([spec("a", unique="k"), spec("b"), spec("c", unique="k"), spec("d")])
    assert [j.existing for j in jobs] == [False, False, True, False]
    assert jobs[2].id == jobs[0].id and jobs[2].spec.argv == ("a",)
    assert [j.id for j in jobs[:2]] + [jobs[3].id] == sorted({j.id for j in jobs})
    assert len(stored(env)) == 3
    assert sorted(env.q.pop(["default"], 10, 30)) == sorted({j.id for j in jobs})


def test_a_retried_submit_with_a_unique_key_is_answered_as_it_was(unique_env: Env) -> None:
    """A submit whose answer was lost goes again with its submit key: it stores nothing and
    gets the same jobs, found ones still marked existing (the client then shows them whole)."""
    env = unique_env
    (there,) = env.c.submit([spec("before", unique="old")])
    env.clock.now += 1
    batch = [spec(unique="old"), spec(unique="u"), spec(unique="u"), spec()]
    first = env.c.submit(batch, key="submit-1")
    env.clock.now += 1
    again = env.c.submit(batch, key="submit-1")
    assert [j.id for j in again] == [j.id for j in first]
    assert first[0].id == there.id and first[1].id == first[2].id
    assert [j.existing for j in again] == [j.existing for j in first] == [True, False, True, False]
    assert len(stored(env)) == 3


def test_a_retry_may_not_take_a_key_another_live_job_holds(unique_env: Env) -> None:
    env = unique_env
    (old,) = env.c.submit([spec(unique="k")])
    env.c.cancel(old.id)
    (new,) = env.c.submit([spec(unique="k")])
    # When the cancelled job is retried while the new one holds the key, then it is refused
    with pytest.raises(FailedPrecondition, match=f"which job {new.id} \\(queued\\) holds"):
        env.c.retry(old.id)
    assert env.c.get(old.id).status is JobStatus.CANCELLED
    # And once the holder is final the retry goes through, and the key is the retried job's
    env.c.cancel(new.id)
    assert env.c.retry(old.id).status is JobStatus.QUEUED
    (found,) = env.c.submit([spec(unique="k")])
    assert found.id == old.id and found.existing
    # a job retried while it holds no rival is retried as ever
    (lone,) = env.c.submit([spec(unique="lone")])
    env.c.cancel(lone.id)
    assert env.c.retry(lone.id).status is JobStatus.QUEUED


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("x" * 201, "unique key is longer than 200 characters"),
        ("a\nb", "unique key must be printable"),
        ("   ", "unique key must be printable characters, not blank"),
    ],
)
def test_a_bad_key_is_refused_and_nothing_stored(unique_env: Env, key: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        unique_env.c.submit([spec(unique=key)])
    assert stored(unique_env) == []
    (ok,) = unique_env.c.submit([spec(unique="x" * 200)])
    assert ok.spec.unique == "x" * 200


# ---- servers sharing one PostgreSQL database ---------------------------------------------------


def test_two_servers_racing_for_a_key_make_one_job(postgres_url: str) -> None:
    """Eight threads on each of two stores (two servers) insert the same key at once, each in
    its own transaction: one job is made, and every other insert answers with it."""
    stores = [PostgresStore(postgres_url, max_connections=10) for _ in range(2)]
    gate = threading.Barrier(16)
    answers: list[tuple[int, bool]] = []
    errors: list[BaseException] = []

    def submit(store: PostgresStore) -> None:
        try:
            gate.wait(10)
            with store.transaction() as tx:
                job = tx.insert_unique(spec(unique="race"), 100.0)
            answers.append((job.id, job.existing))
        except BaseException as e:
            errors.append(e)

    try:
        threads = [threading.Thread(target=submit, args=(s,)) for s in stores for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert len(answers) == 16
        assert len({job_id for job_id, _ in answers}) == 1
        assert sorted(existing for _, existing in answers) == [False] + [True] * 15
        rows = stores[0].read("SELECT count(*) AS n FROM jobs WHERE unique_key = %s", ("race",))
        assert rows[0]["n"] == 1
    finally:
        for s in stores:
            s.close()
