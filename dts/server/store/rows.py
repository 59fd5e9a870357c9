"""Jobs, attempts and workers as rows of an SQL store: the columns, a submitted job's row, and
each row read back by column name into the domain's objects. Any SQL store shares these."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from dts.domain import Attempt, Job, JobSpec, JobStatus, Outcome, WorkerInfo, WorkerState
from dts.limits import LIMIT_NAMES, NO_LIMITS, Limits


class Row(Protocol):
    """A row read by column name (Row, a dict)."""

    def __getitem__(self, column: str) -> Any: ...


INSERT_COLUMNS = (
    "name, queue, priority, argv, shell, env, cwd, timeout, max_retries, backoff, delay, status,"
    " created_at, run_at, limits, unique_key"
)
INSERT_COUNT = INSERT_COLUMNS.count(",") + 1  # values insert_row gives


def insert_row(
    spec: JobSpec, status: JobStatus, created_at: float, run_at: float | None
) -> tuple[Any, ...]:
    return (
        spec.name,
        spec.queue,
        spec.priority,
        json.dumps(list(spec.argv)),
        int(spec.shell),
        json.dumps([list(kv) for kv in spec.env]) if spec.env else "[]",
        spec.cwd,
        spec.timeout or 0.0,
        spec.max_retries or 0,
        spec.backoff or 0.0,
        spec.delay,
        status.value,
        created_at,
        run_at,
        limits_json(spec.limits),
        spec.unique or None,  # NULL: no key (the unique index leaves such rows out)
    )


SPEC_COLUMNS = (
    "id, name, queue, priority, argv, shell, env, cwd, timeout, max_retries, backoff, delay,"
    " limits, unique_key"
)
# when a claimed job was due, for the metrics' queue wait (its first attempt's)
READY_AT = "created_at + delay AS ready_at"
JOB_COLUMNS = (
    f"{SPEC_COLUMNS}, status, attempts, failures, lost, exit_code, error, worker, created_at, "
    "started_at, finished_at, run_at, lease_expires_at, schedule, due_at"
)
ATTEMPT_COLUMNS = (
    "job_id, attempt, worker, started_at, finished_at, exit_code, outcome, error, "
    "length(stdout) AS stdout_bytes, length(stderr) AS stderr_bytes, ran_from, ran_until"
)
WORKER_COLUMNS = (
    "name, host, pid, session, concurrency, queues, state, running, registered_at, last_heartbeat,"
    " credential, server"
)


# Rows are read by column name: a column added to a SELECT, or moved in it, cannot shift what a
# field is read from.


def job_of(row: Row) -> Job:
    """The job from a row that has JOB_COLUMNS."""
    return Job(
        id=row["id"],
        spec=spec_of(row),
        status=JobStatus(row["status"]),
        attempts=row["attempts"],
        failures=row["failures"],
        lost=row["lost"],
        exit_code=row["exit_code"],
        error=row["error"],
        worker=row["worker"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        run_at=row["run_at"],
        lease_expires_at=row["lease_expires_at"],
        schedule=row["schedule"] or "",
        due_at=row["due_at"],
    )


def spec_of(row: Row) -> JobSpec:
    """The spec from a row that has SPEC_COLUMNS."""
    return JobSpec(
        argv=tuple(json.loads(row["argv"])),
        shell=bool(row["shell"]),
        queue=row["queue"],
        priority=row["priority"],
        max_retries=row["max_retries"],
        backoff=row["backoff"],
        timeout=row["timeout"],
        delay=row["delay"],
        env=tuple((k, v) for k, v in json.loads(row["env"])),
        cwd=row["cwd"],
        name=row["name"],
        limits=limits_of(row["limits"]),
        unique=row["unique_key"] or "",
    )


def limits_of(text: str) -> Limits:
    if not text:
        return NO_LIMITS
    stored = json.loads(text)
    return Limits(**{k: int(stored.get(k, 0)) for k in LIMIT_NAMES})


def limits_json(limits: Limits) -> str:
    if not limits.any:
        return ""
    return json.dumps({k: v for k, v in zip(LIMIT_NAMES, limits.values, strict=True) if v})


def attempt_of(row: Row) -> Attempt:
    """The attempt from a row that has ATTEMPT_COLUMNS."""
    return Attempt(
        job_id=row["job_id"],
        attempt=row["attempt"],
        worker=row["worker"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        exit_code=row["exit_code"],
        outcome=Outcome(row["outcome"]),
        error=row["error"],
        stdout_bytes=row["stdout_bytes"],
        stderr_bytes=row["stderr_bytes"],
        ran_from=row["ran_from"],
        ran_until=row["ran_until"],
    )


def worker_of(row: Row) -> WorkerInfo:
    """The worker from a row that has WORKER_COLUMNS."""
    return WorkerInfo(
        name=row["name"],
        host=row["host"],
        pid=row["pid"],
        session=row["session"],
        concurrency=row["concurrency"],
        queues=tuple(json.loads(row["queues"])),
        state=WorkerState(row["state"]),
        running=row["running"],
        registered_at=row["registered_at"],
        last_heartbeat=row["last_heartbeat"],
        credential=row["credential"],
        server=row["server"],
    )


def ranges_of(ids: Sequence[int]) -> str:
    """Ascending ids as compact text: runs as FIRST-LAST, joined by commas ("1-100,205")."""
    runs: list[str] = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        runs.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(runs)


def ids_of(ranges: str) -> list[int]:
    """The ids `ranges_of` wrote."""
    ids: list[int] = []
    for run in filter(None, ranges.split(",")):
        first, _, last = run.partition("-")
        ids.extend(range(int(first), int(last or first) + 1))
    return ids
