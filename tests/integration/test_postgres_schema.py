"""The PostgreSQL store's schema: made once by servers starting together, refused when newer."""

from __future__ import annotations

import threading

import psycopg
import pytest

from dts.errors import Internal
from dts.server.store.postgres import SCHEMA_VERSION, PostgresStore


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
    assert row == (str(SCHEMA_VERSION),) == ("2",)


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
