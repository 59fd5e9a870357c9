"""Unique jobs: while a job with a unique key is not final, a submit with the same key in the
same queue gets that job instead of a new one, and a retry may not take the key from it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from dts.domain import Job, JobSpec
from dts.errors import FailedPrecondition
from dts.server.store import Transaction

log = logging.getLogger("dts.coordinator")


def insert_specs(tx: Transaction, specs: Sequence[JobSpec], now: float) -> list[Job]:
    """Store a submit's jobs in order: runs of specs without a unique key in bulk, each one
    with a key on its own (it may find its job there already: `existing`). Within one submit
    a key given twice in a queue makes one job; the later spec gets it as existing."""
    jobs: list[Job] = []
    run: list[JobSpec] = []
    for spec in specs:
        if not spec.unique:
            run.append(spec)
            continue
        if run:
            jobs += tx.insert_jobs(run, now)
            run = []
        job = tx.insert_unique(spec, now)
        if job.existing:
            log.info("%s", existing_note(job))
        jobs.append(job)
    if run:
        jobs += tx.insert_jobs(run, now)
    return jobs


def existing_note(job: Job) -> str:
    """What a submit that found `job` by its unique key is told (the CLI prints it)."""
    return (
        f"job {job.id} has unique key {job.spec.unique} in queue {job.spec.queue} and is not"
        " final: not submitted again"
    )


def as_answered(jobs: Sequence[Job], made_at: float | None) -> list[Job]:
    """The jobs of an earlier submit, for a retry of it (its submit key), marked `existing` as
    its own answer had them: a job with a unique key was found, not made, when it is older
    than that submit (made at `made_at`) or a repeat of its key within it."""
    seen: set[int] = set()
    answered = []
    for job in jobs:
        older = made_at is not None and job.created_at != made_at
        found = bool(job.spec.unique) and (job.id in seen or older)
        seen.add(job.id)
        answered.append(replace(job, existing=True) if found else job)
    return answered


def check_retry(tx: Transaction, job: Job) -> None:
    """Refuse (FailedPrecondition) to retry a final job whose unique key another job of its
    queue holds now: two jobs of one key would be live at once."""
    if not job.spec.unique:
        return
    holder = tx.unique_holder(job.spec.queue, job.spec.unique)
    if holder is not None and holder.id != job.id:
        raise FailedPrecondition(
            f"job {job.id} has unique key {job.spec.unique} in queue {job.spec.queue}, which job"
            f" {holder.id} ({holder.status}) holds: retry it once that job is final"
        )
