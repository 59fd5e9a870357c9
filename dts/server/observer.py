"""What the coordinator tells whoever watches it (the metrics): submits stored, attempts
started and reported, jobs ended, attempts lost, Redis and database errors. This base does
nothing, so a server without --metrics-listen pays one empty call per event, never per job."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from dts.domain import Assignment, Job, JobStatus, Result
from dts.errors import DtsError, Internal, Unavailable

# modules whose exceptions are the database's (told by name: this module imports no driver)
DB_MODULES = ("sqlite3", "psycopg", "psycopg_pool")


class Observer:
    """The coordinator's hooks, called after the transaction they describe committed. `active`
    is False here: the coordinator skips work done only for the hooks (no store query is
    ever made for them)."""

    active = False

    def submitted(self, jobs: Sequence[Job]) -> None:
        """New jobs stored (not those a unique key or a repeated submit found)."""

    def started(self, assignments: Sequence[Assignment], now: float) -> None:
        """Attempts claimed at `now`."""

    def reported(self, results: Sequence[Result], queues: Mapping[int, str]) -> None:
        """Attempts' results accepted; `queues`: the queue of each result's job, by id."""

    def ended(self, finished: Iterable[tuple[str, str]]) -> None:
        """Jobs that reached a final status, as (queue, status) pairs."""

    def lost(self, count: int) -> None:
        """Attempts lost with their worker (lease ran out, or the worker restarted)."""

    def redis_error(self) -> None:
        """An operation on Redis failed."""

    def db_error(self) -> None:
        """An operation on the store failed (the database is away, or refused it)."""

    def exchanged(
        self,
        results: Sequence[Result],
        succeeded: Mapping[tuple[int, int], str],
        changed: Sequence[Job],
        assignments: Sequence[Assignment],
        now: float,
    ) -> None:
        """What one Exchange did, told through the hooks above: the attempts it ended and
        started, the jobs that succeeded in bulk (`succeeded`: their queues by attempt; the
        other jobs it ended are told with the rest of `changed`, by the coordinator)."""
        if not self.active:
            return
        queues = {job_id: queue for (job_id, _), queue in succeeded.items()}
        queues.update((j.id, j.spec.queue) for j in changed)
        if results:
            self.reported(results, queues)
        if succeeded:
            self.ended([(queue, JobStatus.SUCCEEDED.value) for queue in succeeded.values()])
        if assignments:
            self.started(assignments, now)

    def failed(self, e: BaseException) -> None:
        """A call or a duty ended with `e`: counted as a database error if it is one."""
        if is_db_error(e):
            self.db_error()


def is_db_error(e: BaseException) -> bool:
    """Whether `e`, or what caused it, comes from the database driver (a conflict the caller
    is told of as such, e.g. a unique key taken meanwhile, is not an error of the database)."""
    if isinstance(e, DtsError) and not isinstance(e, Unavailable | Internal):
        return False
    seen: BaseException | None = e
    while seen is not None:
        if type(seen).__module__.split(".")[0] in DB_MODULES:
            return True
        seen = seen.__cause__
    return False


def final_pairs(jobs: Iterable[Job]) -> list[tuple[str, str]]:
    """(queue, status) of the jobs among `jobs` that are final."""
    return [(j.spec.queue, j.status.value) for j in jobs if j.status.final]
