"""Job dependencies inside a store transaction: the edges a submit stores and judges at once,
the waiting jobs a job's end releases or cancels (and the cancels' cascade), and a retry.

Every path that makes a job final calls `settle` in the same transaction, so a dependency's
end and its dependents' fate commit together: a restart cannot lose one without the other.
On PostgreSQL the dependent's row is locked (Transaction.get_job is FOR UPDATE) before its
dependencies are read, so two dependencies ending at once through two servers release it
once: the second to lock it reads the first one's committed end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace

from dts.dependencies import FINISHED, SUCCEEDED, broken_note, judge
from dts.domain import Job, JobSpec, JobStatus
from dts.errors import FailedPrecondition, InvalidArgument
from dts.server.outcomes import move
from dts.server.store import Store, Transaction

log = logging.getLogger("dts.coordinator")


def check_known(tx: Transaction, specs: Sequence[JobSpec]) -> dict[int, JobStatus]:
    """The statuses of the jobs a submit names by id; InvalidArgument for one that does not
    exist. On
    PostgreSQL the named jobs are locked for share until the commit: a dependency cannot end
    unseen between this reading of its status and the new job's edges being stored."""
    ids = sorted({i for s in specs for i in (*s.after, *s.after_finished)})
    if not ids:
        return {}
    found = tx.lock_statuses(ids)
    missing = [i for i in ids if i not in found]
    if missing:
        raise InvalidArgument(f"unknown dependency: no job with id {missing[0]}")
    return found


def link(
    tx: Transaction,
    specs: Sequence[JobSpec],
    jobs: list[Job],
    now: float,
    named: dict[int, JobStatus],
) -> list[Job]:
    """Store the edges of a submit's jobs (`jobs`, in step with `specs`; a step names another
    by its index) and judge at once each new waiting job that a final job (in `named`, the
    statuses `check_known` read) may release or cancel. Returns `jobs` as they are then; a
    step's dependency cancelled here cancels it through `settle`."""
    rows: list[tuple[int, int, str]] = []
    for spec, job in zip(specs, jobs, strict=True):
        if job.existing or job.status is not JobStatus.WAITING:
            continue
        hard = {*spec.after, *(jobs[i].id for i in spec.steps)}
        soft = {*spec.after_finished, *(jobs[i].id for i in spec.steps_finished)} - hard
        rows += ((job.id, d, SUCCEEDED) for d in sorted(hard))
        rows += ((job.id, d, FINISHED) for d in sorted(soft))
    if not rows:
        return jobs
    tx.add_dependencies(rows)
    changed: dict[int, Job] = {}
    for spec, job in zip(specs, jobs, strict=True):
        if job.existing or job.status is not JobStatus.WAITING:
            continue
        if any(named[i].final for i in (*spec.after, *spec.after_finished)):
            new = _judge(tx, job, now, None)  # (no job named final: nothing to judge yet)
            if new is not job:
                changed[job.id] = new
    ended = [j.id for j in changed.values() if j.status.final]
    changed.update((j.id, j) for j in settle(tx, ended, now))
    return [j if j.existing else changed.get(j.id, j) for j in jobs]


def settle(tx: Transaction, ended: Iterable[int], now: float) -> list[Job]:
    """After jobs `ended` became final in this transaction: judge the waiting jobs that depend
    on them, and on, through the ones that end cancelled. Returns the jobs changed."""
    changed: list[Job] = []
    todo = list(ended)
    seen: set[int] = set()
    while todo:
        just_ended = set(todo)
        next_round: list[int] = []
        for job_id in tx.dependents(todo):
            if job_id in seen:
                continue
            job = tx.get_job(job_id)  # locks it (PostgreSQL) before its dependencies are read
            if job is None or job.status is not JobStatus.WAITING:
                continue
            new = _judge(tx, job, now, just_ended)
            if new is not job:
                seen.add(job_id)
                changed.append(new)
                if new.status.final:
                    next_round.append(job_id)
        todo = next_round
    return changed


def settle_ended(
    tx: Transaction, jobs: Iterable[Job], now: float, also: Iterable[int] = ()
) -> list[Job]:
    """`settle` for the final ones among `jobs` and the ids `also` (ended in bulk)."""
    ended = [*also, *(j.id for j in jobs if j.status.final)]
    return settle(tx, ended, now) if ended else []


def retry_move(tx: Transaction, job: Job) -> Job:
    """A user's retry of a failed or cancelled job: queued when its dependencies (if any) are
    done as it asks, else waiting for them again. One whose --after dependency retention has
    deleted is refused: its outcome is not known any more."""
    fields: dict[str, object] = {"failures": 0, "lost": 0, "finished_at": None, "run_at": None}
    edges = tx.waits_for(job.id)
    for depends_on, kind, status in edges:
        if status is None and kind == SUCCEEDED:
            raise FailedPrecondition(
                f"job {job.id} runs after job {depends_on}, which is deleted (retention):"
                " submit it again without that dependency"
            )
    if all(judge(kind, status) for _, kind, status in edges):
        return move(tx, job, JobStatus.QUEUED, **fields)
    return move(tx, job, JobStatus.WAITING, **fields)


def _judge(tx: Transaction, job: Job, now: float, ended: set[int] | None) -> Job:
    """A waiting job after one of its dependencies changed: cancelled, released or as is.
    Only a dependency among `ended` (any, when None: a submit) cancels it: one that had
    failed before a retry of this job keeps it waiting until it is retried itself."""
    edges = tx.waits_for(job.id)
    verdicts = [(depends_on, status, judge(kind, status)) for depends_on, kind, status in edges]
    for depends_on, status, verdict in verdicts:
        if verdict is False and (ended is None or depends_on in ended):
            return move(
                tx,
                job,
                JobStatus.CANCELLED,
                finished_at=now,
                error=broken_note(depends_on, status),
                lease_expires_at=None,
            )
    if not all(verdict for _, _, verdict in verdicts):
        return job
    if job.run_at is not None and job.run_at > now:  # its --delay is still ahead
        return move(tx, job, JobStatus.SCHEDULED)
    return move(tx, job, JobStatus.QUEUED, run_at=None)


def described(store: Store, job: Job) -> Job:
    """`job` with what it waits for and what waits for it (a status answer)."""
    waits_for, waited_by = store.dependencies(job.id)
    return replace(job, waits_for=waits_for, waited_by=waited_by) if waits_for or waited_by else job
