"""Schedules in an SQL store, written once for both: their table and columns, the jobs they
make (one per schedule and due time: a unique index), and the statements, with each store's
placeholder (PARAM) and row lock (LOCK)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from dts.domain import Job, JobSpec, submitted_job
from dts.schedule import Catchup, Overlap, Schedule
from dts.server.store.rows import (
    INSERT_COLUMNS,
    INSERT_COUNT,
    JOB_COLUMNS,
    Row,
    insert_row,
    job_of,
    limits_json,
    limits_of,
)


def schema(real: str) -> list[str]:
    """The schedules' table and the jobs' indexes, for a store whose floating type is
    `real` (the jobs' columns `schedule` and `due_at` are in its own CREATE TABLE)."""
    return [
        f"""CREATE TABLE IF NOT EXISTS schedules (
            name TEXT PRIMARY KEY,
            spec TEXT NOT NULL,         -- JSON object: the job each due time makes
            cron TEXT NOT NULL,         -- a cron expression, or '' with every
            every {real} NOT NULL,      -- seconds between due times, or 0 with cron
            tz TEXT NOT NULL,
            catchup TEXT NOT NULL,
            overlap TEXT NOT NULL,
            paused INTEGER NOT NULL,
            next_due {real} NOT NULL,   -- the earliest due time not fired yet
            skips INTEGER NOT NULL,
            last_skip_at {real},
            created_at {real} NOT NULL,
            updated_at {real} NOT NULL
        )""",
        # one job per schedule and due time, whichever server fires it
        "CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_due_time ON jobs (schedule, due_at)"
        " WHERE schedule IS NOT NULL",
        "CREATE INDEX IF NOT EXISTS jobs_by_schedule ON jobs (schedule, id)"
        " WHERE schedule IS NOT NULL",
    ]


def migration(real: str, guard: str = "") -> list[str]:
    """What brings a store of the version before schedules to theirs (`guard`: 'IF NOT
    EXISTS ' where the store's ADD COLUMN takes it)."""
    return [
        f"ALTER TABLE jobs ADD COLUMN {guard}schedule TEXT",
        f"ALTER TABLE jobs ADD COLUMN {guard}due_at {real}",
        *schema(real),
    ]


SCHEDULE_COLUMNS = (
    "name, spec, cron, every, tz, catchup, overlap, paused, next_due, skips, last_skip_at,"
    " created_at, updated_at"
)
SCHEDULE_MARKS = 13


def spec_json(spec: JobSpec) -> str:
    return json.dumps(
        {
            "argv": list(spec.argv),
            "shell": spec.shell,
            "queue": spec.queue,
            "priority": spec.priority,
            "max_retries": spec.max_retries,
            "backoff": spec.backoff,
            "timeout": spec.timeout,
            "env": [list(kv) for kv in spec.env],
            "cwd": spec.cwd,
            "name": spec.name,
            "limits": limits_json(spec.limits),
        }
    )


def spec_from_json(text: str) -> JobSpec:
    d = json.loads(text)
    return JobSpec(
        argv=tuple(d["argv"]),
        shell=bool(d["shell"]),
        queue=d["queue"],
        priority=d["priority"],
        max_retries=d["max_retries"],
        backoff=d["backoff"],
        timeout=d["timeout"],
        env=tuple((k, v) for k, v in d["env"]),
        cwd=d["cwd"],
        name=d["name"],
        limits=limits_of(d["limits"]),
    )


def schedule_row(s: Schedule) -> tuple[Any, ...]:
    return (
        s.name,
        spec_json(s.spec),
        s.cron,
        s.every,
        s.tz,
        s.catchup.value,
        s.overlap.value,
        int(s.paused),
        s.next_due,
        s.skips,
        s.last_skip_at,
        s.created_at,
        s.updated_at,
    )


def schedule_of(row: Row) -> Schedule:
    return Schedule(
        name=row["name"],
        spec=spec_from_json(row["spec"]),
        cron=row["cron"],
        every=row["every"],
        tz=row["tz"],
        catchup=Catchup(row["catchup"]),
        overlap=Overlap(row["overlap"]),
        paused=bool(row["paused"]),
        next_due=row["next_due"],
        skips=row["skips"],
        last_skip_at=row["last_skip_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class ScheduleWrites:
    """The Transaction's schedule methods, for a transaction whose connection is `_c`."""

    PARAM = "?"
    LOCK = ""  # what a store appends to a SELECT to lock the rows it reads
    _c: Any

    def _marks(self, n: int) -> str:
        return ",".join([self.PARAM] * n)

    def get_schedule(self, name: str) -> Schedule | None:
        row = self._c.execute(
            f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = {self.PARAM}{self.LOCK}",
            (name,),
        ).fetchone()
        return schedule_of(row) if row else None

    def insert_schedule(self, s: Schedule) -> bool:
        """Add `s`; False when its name is taken."""
        cur = self._c.execute(
            f"INSERT INTO schedules ({SCHEDULE_COLUMNS}) VALUES ({self._marks(SCHEDULE_MARKS)})"
            " ON CONFLICT (name) DO NOTHING",
            schedule_row(s),
        )
        return bool(cur.rowcount == 1)

    def update_schedule(self, s: Schedule) -> None:
        p = self.PARAM
        names = [c.strip() for c in SCHEDULE_COLUMNS.split(",")][1:]
        self._c.execute(
            f"UPDATE schedules SET {', '.join(f'{c} = {p}' for c in names)} WHERE name = {p}",
            (*schedule_row(s)[1:], s.name),
        )

    def delete_schedule(self, name: str) -> bool:
        cur = self._c.execute(f"DELETE FROM schedules WHERE name = {self.PARAM}", (name,))
        return bool(cur.rowcount == 1)

    def latest_schedule_job(self, name: str) -> Job | None:
        row = self._c.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE schedule = {self.PARAM}"
            " ORDER BY id DESC LIMIT 1",
            (name,),
        ).fetchone()
        return job_of(row) if row else None

    def insert_schedule_jobs(
        self, specs: Sequence[JobSpec], schedule: str, due: Sequence[float | None], now: float
    ) -> list[Job]:
        """Add the jobs `schedule` makes for its due times `due` (None: run by hand), in order;
        a due time that has its job already (another server fired it) adds none."""
        jobs: list[Job] = []
        marks = self._marks(INSERT_COUNT + 2)
        for spec, due_at in zip(specs, due, strict=True):
            made = submitted_job(0, spec, now)
            row = self._c.execute(
                f"INSERT INTO jobs ({INSERT_COLUMNS}, schedule, due_at) VALUES ({marks})"
                " ON CONFLICT (schedule, due_at) WHERE schedule IS NOT NULL DO NOTHING"
                " RETURNING id",
                (*insert_row(spec, made.status, now, made.run_at), schedule, due_at),
            ).fetchone()
            if row is not None:
                job = submitted_job(row["id"], spec, now)
                jobs.append(replace(job, schedule=schedule, due_at=due_at))
        return jobs


class ScheduleReads:
    """The Store's schedule reads, for a store that sets PARAM and implements `_all`."""

    PARAM = "?"

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        raise NotImplementedError

    def schedules(self) -> list[Schedule]:
        rows = self._all(f"SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name")
        return [schedule_of(r) for r in rows]

    def schedule(self, name: str) -> Schedule | None:
        rows = self._all(
            f"SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = {self.PARAM}", (name,)
        )
        return schedule_of(rows[0]) if rows else None

    def schedule_jobs(self, name: str, limit: int) -> list[Job]:
        """The latest jobs `name` made, newest first."""
        p = self.PARAM
        rows = self._all(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE schedule = {p} ORDER BY id DESC LIMIT {p}",
            (name, limit),
        )
        return [job_of(r) for r in rows]

    def next_schedule_due(self) -> float | None:
        """The earliest next due time of a schedule that is not paused."""
        rows = self._all("SELECT min(next_due) AS earliest FROM schedules WHERE paused = 0")
        value = rows[0]["earliest"]
        return float(value) if value is not None else None
