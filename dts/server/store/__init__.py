"""The store interface the coordinator relies on, with one module per implementation beside it.

This package holds the `Store` and `Transaction` protocols, and `chunks`, which the
implementations share; each implementation is a module of its own in it: sqlite.py and
postgres.py (with lead.py, the lead among servers that share a database).

A store keeps jobs, attempts (with captured output) and workers. Every change happens inside
`transaction()`, which is atomic and serialised with other writers; reads outside a
transaction see committed data only.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol, TypeVar

from dts.controls import QueueSetting
from dts.domain import (
    Assignment,
    Attempt,
    AttemptKey,
    Dependency,
    Job,
    JobFilter,
    JobSpec,
    JobStatus,
    Output,
    Result,
    StatCount,
    WorkerInfo,
)
from dts.schedule import Schedule

T = TypeVar("T")


class Transaction(Protocol):
    """Reads and writes inside one atomic unit of work."""

    def insert_jobs(self, specs: Sequence[JobSpec], now: float) -> list[Job]:
        """Add jobs submitted at `now`, in order, as `domain.submitted_job` makes them."""

    def insert_unique(self, spec: JobSpec, now: float) -> Job:
        """Add a job with a unique key (`spec.unique`) as `insert_jobs` would, unless a job of
        its queue with that key is not final: then that job, with `existing` set. Another
        transaction adding the key is waited for (the schema's partial UNIQUE index holds the
        rule, so two servers cannot both add it)."""

    def unique_holder(self, queue: str, key: str) -> Job | None:
        """The job of `queue` with unique key `key` that is not final, if any."""

    def get_job(self, job_id: int) -> Job | None: ...

    def take_submit_key(self, key: str, now: float) -> list[int] | None:
        """Claim `key` for a submit this transaction stores (None; `record_submit_key` must
        follow), or the ids an earlier submit with that key stored (a retry: store nothing).
        A submit with the same key in another open transaction is waited for."""

    def submit_key_time(self, key: str) -> float | None:
        """When the submit that took `key` was stored (the `now` its jobs were made at)."""

    def record_submit_key(self, key: str, ids: Sequence[int]) -> None:
        """The ids the submit that took `key` stored, ascending."""

    def forget_submit_keys(self, before: float) -> int:
        """Drop the keys of submits made before `before`; returns how many."""

    def update_job(self, job: Job) -> None:
        """Write every mutable field of `job` (status, counters, times, worker, lease)."""

    def renew_lease(self, job_id: int, attempt: int, worker: str, until: float) -> bool:
        """Extend a running attempt's lease if `worker` still holds it; False otherwise."""

    def extend_leases(self, until: float) -> int:
        """Push every running lease out to at least `until`; returns how many."""

    def claim_queued(
        self,
        job_ids: Sequence[int],
        worker: str,
        queues: Sequence[str],
        now: float,
        lease_until: float,
    ) -> list[Assignment]:
        """The one claim rule, as a compare-and-set per id, in the order given: a job still
        queued in one of `queues` (those `worker` registered with) becomes running under
        `worker` with its next attempt (recorded as started at `now`, its lease until
        `lease_until`); ids of other jobs are skipped."""

    def finish_succeeded(
        self, worker: str, results: Sequence[Result], now: float
    ) -> dict[AttemptKey, str]:
        """Record successful results of attempts `worker` still runs (compare-and-set on
        status, attempt and worker): those jobs succeed. Returns the (job id, attempt) keys
        recorded, each with its job's queue; the rest are left untouched for the caller to
        judge."""

    def get_attempt(self, job_id: int, attempt: int) -> Attempt | None: ...

    def finish_attempt(self, attempt: Attempt, output: Output | None) -> None:
        """Record how an attempt ended, when its command ran (if known) and its output if given."""

    def save_worker(self, worker: WorkerInfo) -> None: ...

    def queue_settings(self, names: Sequence[str], lock: bool = False) -> dict[str, QueueSetting]:
        """The stored settings of those of `names` that have one; with `lock`, their rows are
        locked until the commit, so claims of one limited queue count and grant in turn."""

    def running_counts(self, names: Sequence[str]) -> dict[str, int]:
        """Jobs of each of `names` running now, as the store knows them."""

    def queued_places(self, ids: Sequence[int]) -> dict[int, tuple[str, int]]:
        """The (queue, priority) of each of `ids` still queued."""

    def save_queue(self, setting: QueueSetting) -> None:
        """Store a queue's setting (one with nothing set is dropped)."""

    def get_worker(self, name: str) -> WorkerInfo | None: ...

    def delete_worker(self, name: str) -> None: ...

    # ---- schedules (store/schedules.py) ---------------------------------------------------

    def get_schedule(self, name: str) -> Schedule | None:
        """The schedule, locked until the transaction ends where the store locks rows."""

    def insert_schedule(self, s: Schedule) -> bool:
        """Add `s`; False when a schedule has its name."""

    def update_schedule(self, s: Schedule) -> None: ...

    def delete_schedule(self, name: str) -> bool: ...

    def latest_schedule_job(self, name: str) -> Job | None: ...

    def insert_schedule_jobs(
        self, specs: Sequence[JobSpec], schedule: str, due: Sequence[float | None], now: float
    ) -> list[Job]:
        """Add the jobs of `schedule` for its due times `due` (None: run by hand); one whose
        due time has its job already (a unique index) is not added."""

    def add_dependencies(self, rows: Sequence[tuple[int, int, str]]) -> None:
        """Store edges (job id, the id it depends on, kind: 'succeeded' or 'finished')."""

    def lock_statuses(self, ids: Sequence[int]) -> dict[int, JobStatus]:
        """The statuses of the jobs among `ids` that exist, locked for share until the commit
        where the store can (their end waits for it, and this read waits for an end under
        way)."""

    def waits_for(self, job_id: int) -> list[tuple[int, str, JobStatus | None]]:
        """The edges of `job_id`: (the job it depends on, kind, that job's status; None when
        it is deleted), by id."""

    def dependents(self, ids: Sequence[int]) -> list[int]:
        """The jobs that depend on any of `ids`, ascending."""


class Store(Protocol):
    """Durable home of jobs, their history and the worker registry."""

    #: Other servers may use this store at the same time (PostgreSQL); a SQLite file is one
    #: server's own.
    shared: bool

    def lead(self) -> bool:
        """Whether this server may run the duties that must run on one server at a time: it
        holds the store's lead (taking it when free), always so for a store of its own."""

    def transaction(self, durable: bool = True) -> AbstractContextManager[Transaction]:
        """One atomic unit of work; durable=False: it may be lost with the machine (not with
        the process), for soft state the server can rebuild (leases, heartbeats)."""

    def get_job(self, job_id: int) -> Job | None: ...

    def list_jobs(self, flt: JobFilter) -> list[Job]: ...

    def attempts(self, job_id: int) -> list[Attempt]: ...

    def output(self, job_id: int, attempt: int) -> Output | None: ...

    def stats(self) -> list[StatCount]: ...

    def activity(self, since: float) -> list[tuple[int, JobStatus, int]]:
        """(minute number, final status, count) of the jobs finished at or after `since`."""

    def live_stats(self) -> list[StatCount]:
        """Like stats(), of the jobs not final only (a read as large as the backlog, not the
        history: for the metrics' gauges)."""

    def workers(self) -> list[WorkerInfo]: ...

    def queue_settings(self) -> list[QueueSetting]:
        """Every queue's stored setting, by name."""

    def dependencies(self, job_id: int) -> tuple[tuple[Dependency, ...], tuple[Dependency, ...]]:
        """What the job waits for and what waits for it (README "Dependencies")."""

    def due_jobs(self, now: float, limit: int) -> list[int]:
        """Ids of scheduled jobs whose run_at has passed, earliest first."""

    def next_run_at(self) -> float | None:
        """The earliest run_at of any scheduled job."""

    def expired_leases(self, now: float, limit: int) -> list[int]:
        """Ids of running jobs whose lease ran out before `now`."""

    def running_of(self, worker: str) -> list[Job]:
        """Jobs the store believes `worker` is running."""

    def queued(self, after_id: int, limit: int) -> list[Job]:
        """Queued jobs with id > after_id, by id (for reconciling the Redis queue)."""

    def statuses(self, ids: Sequence[int]) -> dict[int, Job]:
        """The jobs among `ids` that exist."""

    def purge(self, before: float, statuses: Collection[JobStatus], queue: str, limit: int) -> int:
        """Delete at most `limit` final jobs in `statuses` (every final one when empty) that
        finished before `before`, of `queue` if given, with their attempts (and output) and
        the submit keys that name them, in one short transaction; returns how many."""

    def schedules(self) -> list[Schedule]: ...

    def schedule(self, name: str) -> Schedule | None: ...

    def schedule_jobs(self, name: str, limit: int) -> list[Job]:
        """The latest jobs the schedule made, newest first."""

    def next_schedule_due(self) -> float | None:
        """The earliest next due time of a schedule that is not paused."""

    def close(self) -> None: ...


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """`items` in slices of at most `size`."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
