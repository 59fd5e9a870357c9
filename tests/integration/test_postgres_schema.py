"""The PostgreSQL store with other servers on its database: the schema made once by servers
starting together (refused when newer), submit keys and conflicts between their transactions."""

from __future__ import annotations

import threading
from dataclasses import replace

import psycopg
import pytest

from dts.controls import QueueSetting
from dts.domain import JobSpec, JobStatus, Outcome, Output, Result
from dts.errors import Internal, Unavailable
from dts.server.store.postgres import SCHEMA_VERSION, PostgresStore
from tests.harness import wait_until


def test_servers_starting_at_once_on_an_empty_database_make_the_schema_once(
    postgres_url: str,
) -> None:
    # Given four servers starting at the same moment on an empty database
    gate = threading.Barrier(4)
    errors: list[BaseException] = []
    stores: list[PostgresStore] = []

    def start() -> None:
        gate.wait()
        try:
            stores.append(PostgresStore(postgres_url, max_connections=2))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    # Then each started (the advisory lock let one make the schema, the others found it)
    assert errors == [] and len(stores) == 4
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert row == (str(SCHEMA_VERSION),)


def test_a_newer_schema_is_refused(postgres_url: str) -> None:
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute(
            "UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    with pytest.raises(Internal, match=f"schema version {SCHEMA_VERSION + 1}; this dts knows"):
        PostgresStore(postgres_url)


def test_a_version_1_database_gets_its_submit_keys_table(postgres_url: str) -> None:
    # Given a database as dts left it at schema version 1 (before submit keys)
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("DROP TABLE submit_keys")
        conn.execute("DROP INDEX jobs_finished")
        conn.execute("ALTER TABLE workers DROP COLUMN server")
        conn.execute(
            "INSERT INTO workers VALUES"
            " ('w1', 'h', 7, 's', 1, '[\"default\"]', 'idle', 0, 1, 2, '')"
        )
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    # When this dts opens it, then submit keys work and the schema is current
    store = PostgresStore(postgres_url)
    try:
        with store.transaction() as tx:
            assert tx.take_submit_key("k", 1.0) is None
            tx.record_submit_key("k", [5, 6])
        with store.transaction() as tx:
            assert tx.take_submit_key("k", 2.0) == [5, 6]
        assert [(w.name, w.server) for w in store.workers()] == [("w1", "")]
    finally:
        store.close()
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert row == (str(SCHEMA_VERSION),)
    with psycopg.connect(postgres_url) as conn:
        index = conn.execute("SELECT to_regclass('jobs_finished') IS NOT NULL").fetchone()
    assert index == (True,)  # version 5: the purge's index


def test_a_version_5_database_gets_its_queues_table(postgres_url: str) -> None:
    # Given a database as dts left it at schema version 5 (before queue controls)
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("DROP TABLE queues")
        conn.execute("DROP INDEX jobs_running_by_queue")
        conn.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    # When this dts opens it, then queue settings are kept and the schema is current
    store = PostgresStore(postgres_url)
    try:
        with store.transaction() as tx:
            tx.save_queue(QueueSetting("q", limit=2, updated_at=1.0))
        assert store.queue_settings() == [QueueSetting("q", False, 2, 1.0)]
    finally:
        store.close()
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        index = conn.execute("SELECT to_regclass('jobs_running_by_queue') AS i").fetchone()
    assert row == (str(SCHEMA_VERSION),) and index == ("jobs_running_by_queue",)


def test_a_submit_key_in_flight_on_another_server_is_waited_for(postgres_url: str) -> None:
    """Two servers given the same key at once: the second waits for the first's commit and
    answers with its ids, so a retry racing its original stores nothing twice."""
    a, b = PostgresStore(postgres_url), PostgresStore(postgres_url)
    try:
        first_has_key = threading.Event()
        answer: list[list[int] | None] = []

        def second() -> None:
            first_has_key.wait(10)
            with b.transaction() as tx:
                answer.append(tx.take_submit_key("k", 2.0))

        t = threading.Thread(target=second)
        t.start()
        with a.transaction() as tx:
            assert tx.take_submit_key("k", 1.0) is None
            first_has_key.set()
            t.join(0.5)  # the second is blocked on our key until we commit
            assert t.is_alive() and answer == []
            tx.record_submit_key("k", [41, 42])
        t.join(10)
        assert answer == [[41, 42]]
    finally:
        a.close()
        b.close()


def test_a_deadlock_with_another_server_is_unavailable_and_writes_nothing(
    postgres_url: str,
) -> None:
    """Two servers' transactions that lock two jobs in opposite orders: PostgreSQL ends one;
    that one answers UNAVAILABLE (its caller tries again) and left nothing written."""
    a, b = PostgresStore(postgres_url), PostgresStore(postgres_url)
    try:
        with a.transaction() as tx:
            one, two = tx.insert_jobs([JobSpec(argv=("true",))] * 2, 1.0)
        both_hold_one = threading.Barrier(2)
        outcomes: dict[str, BaseException | None] = {}

        def lock(store: PostgresStore, first: int, then: int, who: str) -> None:
            try:
                with store.transaction() as tx:
                    job = tx.get_job(first)
                    assert job is not None
                    tx.update_job(replace(job, error=who))
                    both_hold_one.wait(10)
                    tx.get_job(then)
                outcomes[who] = None
            except BaseException as e:
                outcomes[who] = e

        threads = [
            threading.Thread(target=lock, args=(a, one.id, two.id, "a")),
            threading.Thread(target=lock, args=(b, two.id, one.id, "b")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        failed = {who: e for who, e in outcomes.items() if e is not None}
        assert len(outcomes) == 2 and len(failed) == 1, outcomes
        ((loser, error),) = failed.items()
        assert isinstance(error, Unavailable), error
        assert "database conflict (writing), nothing written" in str(error)
        winner_first = one.id if loser == "b" else two.id
        loser_first = two.id if loser == "b" else one.id
        assert [j.error for j in (a.get_job(winner_first), a.get_job(loser_first))] == [
            "b" if loser == "a" else "a",
            "",
        ]
    finally:
        a.close()
        b.close()


def test_a_server_starting_while_another_submits_does_not_deadlock_with_it(
    postgres_url: str,
) -> None:
    """A server that starts on a database whose schema is current must take no lock that the
    writes of the servers already serving wait for. Here a serving server's keyed submit holds
    its new row of submit_keys and is about to insert its jobs when another server starts."""
    PostgresStore(postgres_url).close()  # the schema is current
    errors: list[BaseException] = []

    def start() -> None:
        try:
            PostgresStore(postgres_url, max_connections=2).close()
        except BaseException as e:
            errors.append(e)

    with psycopg.connect(postgres_url) as serving:  # a transaction, as a keyed submit's
        serving.execute("INSERT INTO submit_keys (key, ids, created_at) VALUES ('k', '', 0)")
        starting = threading.Thread(target=start)
        starting.start()
        # (until the start is done, or waits for a lock: here, for our row of submit_keys)
        wait_until(
            lambda: not starting.is_alive() or waiting_for_a_lock(postgres_url),
            15,
            what="the start to end or wait",
        )
        try:  # the lock the submit's INSERT of its jobs takes
            serving.execute("LOCK TABLE jobs IN ROW EXCLUSIVE MODE")
        except psycopg.errors.DeadlockDetected as e:
            errors.append(e)
        serving.rollback()
        starting.join(30)
    assert errors == []


def waiting_for_a_lock(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
    return bool(row and row[0])


def test_a_version_2_database_gets_unique_keys(postgres_url: str) -> None:
    # Given a database as dts left it at schema version 2 (before unique keys), with a job
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("DROP INDEX jobs_unique")
        conn.execute("ALTER TABLE jobs DROP COLUMN unique_key")
        conn.execute(
            "INSERT INTO jobs (name, queue, priority, argv, shell, env, cwd, timeout, max_retries,"
            " backoff, delay, status, created_at) VALUES"
            " ('old', 'default', 0, '[\"true\"]', 0, '[]', '', 0, 0, 0, 0, 'queued', 1)"
        )
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    # When this dts opens it, then the old job has no key and a key is taken once
    store = PostgresStore(postgres_url)
    try:
        old = store.get_job(1)
        assert old is not None and old.spec.unique == ""
        with store.transaction() as tx:
            first = tx.insert_unique(JobSpec(argv=("true",), unique="k"), 2.0)
            again = tx.insert_unique(JobSpec(argv=("true",), unique="k"), 3.0)
        assert (first.existing, again.existing, again.id) == (False, True, first.id)
    finally:
        store.close()
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        index = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'jobs_unique'"
        ).fetchone()
    assert row == (str(SCHEMA_VERSION),)
    assert index is not None and "UNIQUE" in index[0] and "unique_key IS NOT NULL" in index[0]


def test_a_version_5_database_gets_dependencies(postgres_url: str) -> None:
    # Given a database as dts left it at schema version 5 (before dependencies), with a job
    # holding a unique key
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("DROP TABLE dependencies")
        conn.execute("DROP INDEX jobs_unique")
        conn.execute(
            "CREATE UNIQUE INDEX jobs_unique ON jobs (queue, unique_key)"
            " WHERE unique_key IS NOT NULL AND status IN ('scheduled', 'queued', 'running')"
        )
        conn.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    # When this dts opens it, then a job can wait for another, and holds its unique key
    store = PostgresStore(postgres_url)
    try:
        with store.transaction() as tx:
            (first,) = tx.insert_jobs([JobSpec(argv=("true",))], 1.0)
            (second,) = tx.insert_jobs(
                [JobSpec(argv=("true",), after=(first.id,), unique="k")], 1.0
            )
            tx.add_dependencies([(second.id, first.id, "succeeded")])
            assert second.status is JobStatus.WAITING
            assert tx.insert_unique(JobSpec(argv=("true",), unique="k"), 2.0).existing
        assert store.dependencies(second.id)[0][0].job_id == first.id
    finally:
        store.close()
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert row == (str(SCHEMA_VERSION),) == ("10",)


def test_a_version_7_database_gets_the_name_index(postgres_url: str) -> None:
    # Given a database as dts left it at schema version 7 (before the dashboard's name filter)
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("DROP INDEX jobs_by_name")
        conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    # When this dts opens it, then the index is there and the schema is current
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        index = conn.execute("SELECT to_regclass('jobs_by_name') AS i").fetchone()
    assert row == (str(SCHEMA_VERSION),) == ("10",) and index == ("jobs_by_name",)


def test_a_version_9_database_keeps_its_attempts_and_gains_the_worker_times(
    postgres_url: str,
) -> None:
    # Given a database as dts left it at schema version 9 (before the worker's own times of a
    # command), with a finished attempt in it
    store = PostgresStore(postgres_url)
    try:
        with store.transaction() as tx:
            (job,) = tx.insert_jobs([JobSpec(argv=("true",))], 1.0)
            tx.claim_queued([job.id], "w", [job.spec.queue], 2.0, 32.0)
            tx.finish_succeeded("w", [Result(job.id, 1, Outcome.SUCCEEDED, 0, stdout=b"hi")], 3.0)
        before = store.attempts(job.id)
    finally:
        store.close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("ALTER TABLE attempts DROP COLUMN ran_from, DROP COLUMN ran_until")
        conn.execute("UPDATE meta SET value = '9' WHERE key = 'schema_version'")
    # When this dts opens it, then the attempt and its output are kept, with no worker times
    store = PostgresStore(postgres_url)
    try:
        assert store.attempts(job.id) == before and len(before) == 1
        assert (before[0].ran_from, before[0].ran_until) == (None, None)
        assert store.output(job.id, 1) == Output(1, b"hi", b"")
    finally:
        store.close()
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert row == (str(SCHEMA_VERSION),) == ("10",)


def test_the_name_filter_can_use_the_partial_name_index(postgres_url: str) -> None:
    # The index leaves unnamed jobs out; the listing's query names its predicate, so the
    # planner may use it (sequential scans off: whether it can, not whether it prefers to)
    from dts.server.store.reads import NAMED

    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = conn.execute(
            "EXPLAIN SELECT id FROM jobs"
            f" WHERE name = %s AND {NAMED} AND id < %s ORDER BY id DESC LIMIT 5",
            ("a", 10),
        ).fetchall()
    assert "jobs_by_name" in str(plan), plan
