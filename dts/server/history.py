"""`dts-server copy-history`: a history copied from one store into an empty other (SQLite to
PostgreSQL, say), ids, attempts and their output kept, so a deployment moves without its past."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, Protocol

from dts.errors import DtsError, InvalidArgument
from dts.options import add_version
from dts.server.store import rows
from dts.server.store.schedules import SCHEDULE_COLUMNS as SCHEDULES
from dts.server.store.url import parse_store_url

PROG = "dts-server copy-history"
PAGE = 2000  # jobs read, and written with their attempts, at a time

JOB_COLUMNS = tuple(column.strip() for column in rows.JOB_COLUMNS.split(","))  # every one
ATTEMPT_COLUMNS = (  # every one, the output itself rather than its length
    *(c.strip() for c in rows.ATTEMPT_COLUMNS.split(",") if "length(" not in c),
    "stdout",
    "stderr",
)
SCHEDULE_COLUMNS = tuple(column.strip() for column in SCHEDULES.split(","))


EDGE_COLUMNS = ("job_id", "depends_on", "kind")  # of dependencies, copied with their job


class Copyable(Protocol):
    """What both stores offer for a copy: raw reads, raw writes, and the id counter set after."""

    PARAM: str

    def read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]: ...

    def put_rows(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None: ...

    def ids_copied(self) -> None: ...

    def close(self) -> None: ...


def open_copyable(db: str) -> Copyable:
    url = parse_store_url(db)
    if url.kind == "postgres":
        from dts.server.store.postgres import PostgresStore

        return PostgresStore(url.target, max_connections=2)
    from dts.server.store.sqlite import SqliteStore

    return SqliteStore(url.target)


def count(store: Copyable, table: str) -> int:
    return int(store.read(f"SELECT count(*) AS n FROM {table}")[0]["n"])


def copy(source: Copyable, target: Copyable, page: int = PAGE) -> tuple[int, int]:
    """Copy every job and attempt, the jobs' dependencies and the schedules; the numbers of
    jobs and attempts. The target must be empty."""
    jobs = attempts = 0
    after = 0
    p = source.PARAM
    cols = ",".join(JOB_COLUMNS)
    while True:
        found = source.read(
            f"SELECT {cols} FROM jobs WHERE id > {p} ORDER BY id LIMIT {p}", (after, page)
        )
        if not found:
            break
        first, last = found[0]["id"], found[-1]["id"]
        tries = source.read(
            f"SELECT {','.join(ATTEMPT_COLUMNS)} FROM attempts"
            f" WHERE job_id >= {p} AND job_id <= {p} ORDER BY job_id, attempt",
            (first, last),
        )
        target.put_rows("jobs", JOB_COLUMNS, [row_values(r, JOB_COLUMNS) for r in found])
        target.put_rows(
            "attempts", ATTEMPT_COLUMNS, [row_values(r, ATTEMPT_COLUMNS) for r in tries]
        )
        edges = source.read(
            f"SELECT {','.join(EDGE_COLUMNS)} FROM dependencies"
            f" WHERE job_id >= {p} AND job_id <= {p} ORDER BY job_id, depends_on",
            (first, last),
        )
        if edges:
            target.put_rows(
                "dependencies", EDGE_COLUMNS, [row_values(r, EDGE_COLUMNS) for r in edges]
            )
        jobs, attempts, after = jobs + len(found), attempts + len(tries), last
    defined = source.read(f"SELECT {','.join(SCHEDULE_COLUMNS)} FROM schedules ORDER BY name")
    target.put_rows(
        "schedules", SCHEDULE_COLUMNS, [row_values(r, SCHEDULE_COLUMNS) for r in defined]
    )
    target.ids_copied()
    return jobs, attempts


def row_values(row: Any, columns: Sequence[str]) -> tuple[Any, ...]:
    """A row's values in `columns` order, binary ones as bytes whichever store read them."""
    values = tuple(row[c] for c in columns)
    return tuple(bytes(v) if isinstance(v, memoryview) else v for v in values)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Copy a dts history (jobs, attempts, their output; ids kept) into an empty "
        "store, e.g. from SQLite to PostgreSQL. Stop the server first.",
        epilog="examples:\n"
        "  dts-server copy-history --from /var/lib/dts/dts.db --to postgresql://dts@db.lan/dts\n"
        "  dts-server copy-history --from sqlite:///old.db --to sqlite:///new.db",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(p, "dts-server")
    p.add_argument("--from", dest="source", required=True, help="the store to copy (a --db value)")
    p.add_argument("--to", dest="target", required=True, help="an empty store (a --db value)")
    return p


def main(argv: Sequence[str]) -> int:
    ns = parser().parse_args(list(argv))
    try:
        source_url, target_url = parse_store_url(ns.source), parse_store_url(ns.target)
        if source_url == target_url:
            raise InvalidArgument("--from and --to are the same store")
    except DtsError as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        return 2
    try:
        source = open_copyable(ns.source)
        try:
            target = open_copyable(ns.target)
            try:
                return _copy_into_empty(source, target, source_url.shown, target_url.shown)
            finally:
                target.close()
        finally:
            source.close()
    except DtsError as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        return 1


def _copy_into_empty(source: Copyable, target: Copyable, shown_from: str, shown_to: str) -> int:
    held = count(target, "jobs") + count(target, "attempts")
    if held:
        sys.stderr.write(
            f"{PROG}: {shown_to} is not empty ({count(target, 'jobs')} jobs); the history is "
            "copied only into an empty store\n"
        )
        return 1
    jobs, attempts = copy(source, target)
    print(f"copied {jobs} jobs and {attempts} attempts from {shown_from} to {shown_to}")
    return 0
