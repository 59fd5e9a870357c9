"""What any SQL store reads outside a transaction, written once: each store gives its
placeholder (PARAM) and how it runs a query (`_all`); the statuses go in as SQL literals."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Final

from dts.controls import QueueSetting
from dts.domain import Attempt, Dependency, Job, JobFilter, JobStatus, Output, StatCount, WorkerInfo
from dts.server.store.rows import (
    ATTEMPT_COLUMNS,
    JOB_COLUMNS,
    WORKER_COLUMNS,
    attempt_of,
    job_of,
    worker_of,
)


def literal(value: StrEnum) -> str:
    """`value` as an SQL string literal, e.g. 'running'."""
    return "'" + value.value.replace("'", "''") + "'"


# Statuses go into the SQL text as literals, not as bound parameters: a partial index
# (WHERE status = 'running') serves only a query that names the same literal, and the
# index's own DDL takes no parameters.
SCHEDULED: Final = literal(JobStatus.SCHEDULED)
QUEUED: Final = literal(JobStatus.QUEUED)
RUNNING: Final = literal(JobStatus.RUNNING)
# The rows whose unique key is taken: a key and a status that is not final (a unit test checks
# these are all the statuses that are not). Both stores' partial UNIQUE index on (queue,
# unique_key) has this predicate, and a query that is to use that index names it as written.
WAITING: Final = literal(JobStatus.WAITING)
UNIQUE_HELD: Final = (
    f"unique_key IS NOT NULL AND status IN ({WAITING}, {SCHEDULED}, {QUEUED}, {RUNNING})"
)
UNIQUE_INDEX: Final = "jobs_unique"
# The dashboard's name filter, paged by id (SQLite schema version 11, PostgreSQL 9). Partial:
# a job without a name (most, and every job of a submit-heavy load) costs no index write; a
# query uses the index only when it names the predicate as written here (NAMED).
NAMED: Final = "name <> ''"
NAME_INDEX: Final = f"CREATE INDEX IF NOT EXISTS jobs_by_name ON jobs (name, id) WHERE {NAMED}"


class SqlReads:
    """The Store's reads, for a store that sets PARAM and implements `_all`."""

    PARAM = "?"
    MINUTE = "CAST(finished_at / 60 AS INTEGER)"  # the minute a job finished in (truncated)

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """Rows of a query written with PARAM as its placeholder, readable by column name."""
        return self._all(sql, args)

    def get_job(self, job_id: int) -> Job | None:
        rows = self._all(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = {self.PARAM}", (job_id,))
        return job_of(rows[0]) if rows else None

    def list_jobs(self, flt: JobFilter) -> list[Job]:
        p = self.PARAM
        where: list[str] = []
        args: list[Any] = []
        if flt.status is not None:
            where.append(f"status = {p}")
            args.append(flt.status.value)
        if flt.queue is not None:
            where.append(f"queue = {p}")
            args.append(flt.queue)
        if flt.name is not None:
            where.append(f"name = {p} AND {NAMED}" if flt.name else "name = ''")
            args += [flt.name] if flt.name else []
        if flt.before_id is not None:  # keyset paging: an index range, never an OFFSET
            where.append(f"id < {p}")
            args.append(flt.before_id)
        if flt.since is not None:
            where.append(f"created_at >= {p}")
            args.append(flt.since)
        if flt.until is not None:
            where.append(f"created_at < {p}")
            args.append(flt.until)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._all(
            f"SELECT {JOB_COLUMNS} FROM jobs {clause} ORDER BY id DESC LIMIT {p}",
            (*args, flt.limit),
        )
        return [job_of(r) for r in rows]

    def attempts(self, job_id: int) -> list[Attempt]:
        rows = self._all(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE job_id = {self.PARAM} ORDER BY attempt",
            (job_id,),
        )
        return [attempt_of(r) for r in rows]

    def output(self, job_id: int, attempt: int) -> Output | None:
        p = self.PARAM
        rows = self._all(
            f"SELECT attempt, stdout, stderr FROM attempts WHERE job_id = {p} AND attempt = {p}",
            (job_id, attempt),
        )
        if not rows:
            return None
        row = rows[0]
        return Output(row["attempt"], bytes(row["stdout"]), bytes(row["stderr"]))

    def stats(self) -> list[StatCount]:
        rows = self._all(
            "SELECT queue, status, count(*) AS count FROM jobs GROUP BY queue, status"
            " ORDER BY queue, status"
        )
        return [StatCount(r["queue"], JobStatus(r["status"]), r["count"]) for r in rows]

    def activity(self, since: float) -> list[tuple[int, JobStatus, int]]:
        """(minute number, final status, count) of the jobs that finished at or after `since`:
        a range of the jobs_finished index, so it reads only the last hour's rows."""
        rows = self._all(
            f"SELECT {self.MINUTE} AS minute, status, count(*) AS count FROM jobs"
            f" WHERE finished_at >= {self.PARAM} GROUP BY minute, status",
            (since,),
        )
        return [(int(r["minute"]), JobStatus(r["status"]), int(r["count"])) for r in rows]

    def live_stats(self) -> list[StatCount]:
        rows = self._all(
            "SELECT queue, status, count(*) AS count FROM jobs"
            f" WHERE status IN ({WAITING}, {SCHEDULED}, {QUEUED}, {RUNNING})"
            " GROUP BY queue, status ORDER BY queue, status"
        )
        return [StatCount(r["queue"], JobStatus(r["status"]), r["count"]) for r in rows]

    def queue_settings(self) -> list[QueueSetting]:
        rows = self._all("SELECT name, paused, run_limit, updated_at FROM queues ORDER BY name")
        return [
            QueueSetting(r["name"], bool(r["paused"]), r["run_limit"], float(r["updated_at"]))
            for r in rows
        ]

    def dependencies(self, job_id: int) -> tuple[tuple[Dependency, ...], tuple[Dependency, ...]]:
        """What job `job_id` waits for, and what waits for it, by id (status None: deleted)."""
        p = self.PARAM
        waits = self._all(
            "SELECT d.depends_on AS other, d.kind, j.status FROM dependencies d"
            f" LEFT JOIN jobs j ON j.id = d.depends_on WHERE d.job_id = {p} ORDER BY other",
            (job_id,),
        )
        waited = self._all(
            "SELECT d.job_id AS other, d.kind, j.status FROM dependencies d"
            f" LEFT JOIN jobs j ON j.id = d.job_id WHERE d.depends_on = {p} ORDER BY other",
            (job_id,),
        )
        return _edges(waits), _edges(waited)

    def workers(self) -> list[WorkerInfo]:
        return [
            worker_of(r) for r in self._all(f"SELECT {WORKER_COLUMNS} FROM workers ORDER BY name")
        ]

    def due_jobs(self, now: float, limit: int) -> list[int]:
        p = self.PARAM
        rows = self._all(
            f"SELECT id FROM jobs WHERE status = {SCHEDULED} AND run_at <= {p}"
            f" ORDER BY run_at LIMIT {p}",
            (now, limit),
        )
        return [r["id"] for r in rows]

    def next_run_at(self) -> float | None:
        rows = self._all(f"SELECT min(run_at) AS earliest FROM jobs WHERE status = {SCHEDULED}")
        value = rows[0]["earliest"]
        return float(value) if value is not None else None

    def expired_leases(self, now: float, limit: int) -> list[int]:
        p = self.PARAM
        rows = self._all(
            f"SELECT id FROM jobs WHERE status = {RUNNING} AND lease_expires_at < {p}"
            f" ORDER BY lease_expires_at LIMIT {p}",
            (now, limit),
        )
        return [r["id"] for r in rows]

    def running_of(self, worker: str) -> list[Job]:
        rows = self._all(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = {RUNNING} AND worker = {self.PARAM}",
            (worker,),
        )
        return [job_of(r) for r in rows]

    def queued(self, after_id: int, limit: int) -> list[Job]:
        p = self.PARAM
        rows = self._all(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = {QUEUED} AND id > {p}"
            f" ORDER BY id LIMIT {p}",
            (after_id, limit),
        )
        return [job_of(r) for r in rows]


def _edges(rows: Sequence[Any]) -> tuple[Dependency, ...]:
    return tuple(
        Dependency(
            r["other"], JobStatus(r["status"]) if r["status"] else None, r["kind"] == "finished"
        )
        for r in rows
    )
