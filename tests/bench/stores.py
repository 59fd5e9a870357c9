"""The benchmark's stores: a fresh PostgreSQL database per measurement, what its server is,
and a history of succeeded jobs written straight to either store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg

from tests import postgres


class Database:
    """A fresh PostgreSQL database for one measurement's server; stop() drops it."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.url = postgres.create_database(admin_url)
        self._dropped = False

    def stop(self, timeout: float = 30.0) -> None:
        if not self._dropped:
            self._dropped = True
            postgres.drop_database(self.admin_url, self.url)


# A succeeded job's row as the server leaves it (history_reads writes `rows` of them), with the
# store's placeholder for its created_at, started_at and finished_at.
HISTORY_COLUMNS = (
    "name, queue, priority, argv, shell, env, cwd, timeout, max_retries, backoff, delay, status,"
    " attempts, created_at, started_at, finished_at, exit_code, worker"
)


def history_row(param: str) -> str:
    return (
        "'', 'default', 0, '[\"true\"]', 0, '[]', '', 0, 0, 1, 0, 'succeeded', 1,"
        f" {param}, {param}, {param}, 0, 'w'"
    )


def _pg_history(url: str, rows: int, now: float) -> None:
    """`rows` succeeded jobs into the PostgreSQL jobs table in one statement, their ids from
    its sequence as the server's would be; then VACUUM ANALYZE, which autovacuum would have
    done to a table grown by a million rows (the planner then knows its size)."""
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(
            f"INSERT INTO jobs ({HISTORY_COLUMNS}) SELECT {history_row('%s')}"
            " FROM generate_series(1, %s)",
            (now, now, now, rows),
        )
        con.execute("VACUUM ANALYZE jobs")


def describe(admin_url: str) -> dict[str, str]:
    """What the PostgreSQL figures were measured on: version, address, durability settings."""
    info = psycopg.conninfo.conninfo_to_dict(admin_url)
    with psycopg.connect(admin_url) as con:
        settings = {
            name: str(row[0]) if (row := con.execute(f"SHOW {name}").fetchone()) else "?"
            for name in ("server_version", "fsync", "synchronous_commit")
        }
    return {"address": f"{info.get('host', '')}:{info.get('port', 5432)}", **settings}


def write_history(store: str, db: Path | str, rows: int, now: float) -> None:
    """`rows` succeeded jobs straight into the jobs table of the store ("sqlite": the file
    `db`; "postgres": the database URL `db`), its server stopped."""
    if store == "postgres":
        _pg_history(str(db), rows, now)
        return
    con = sqlite3.connect(db)
    con.executemany(
        f"INSERT INTO jobs ({HISTORY_COLUMNS}) VALUES ({history_row('?')})",
        ((now, now, now) for _ in range(rows)),
    )
    con.commit()
    con.close()
