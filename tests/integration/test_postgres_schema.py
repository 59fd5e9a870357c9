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
