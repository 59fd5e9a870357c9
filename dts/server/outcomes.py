"""What happens to a job inside a store transaction: each status change (through the domain's
transition table), the end of an attempt, and what a worker's report or a lost worker does
to the job (end it, run it again, schedule its retry after a backoff)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from dts.backoff import compute_backoff
from dts.domain import (
    EXIT_CANNOT_RUN,
    Attempt,
    Job,
    JobStatus,
    Outcome,
    Output,
    Result,
    can_transition,
)
from dts.errors import Internal
from dts.server.store import Transaction

log = logging.getLogger("dts.coordinator")


def move(tx: Transaction, job: Job, status: JobStatus, **changes: object) -> Job:
    """Change a job's status, as the transition table allows, with `changes`; logged."""
    if not can_transition(job.status, status):
        raise Internal(f"job {job.id}: {job.status} -> {status} is not allowed")
    new = replace(job, status=status, **changes)  # type: ignore[arg-type]
    tx.update_job(new)
    detail = f" worker={new.worker} attempt={new.attempts}" if new.worker else ""
    log.info(
        "job %d %s -> %s%s%s",
        job.id,
        job.status,
        status,
        detail,
        f" ({new.error})" if new.error and status is not JobStatus.RUNNING else "",
    )
    return new


def end_attempt(
    tx: Transaction,
    job: Job,
    now: float,
    outcome: Outcome,
    exit_code: int | None,
    error: str,
    output: Output | None = None,
    ran: tuple[float | None, float | None] = (None, None),
) -> None:
    """Close the job's current attempt with its outcome (and its output and when the worker
    ran its command, if known)."""
    tx.finish_attempt(
        Attempt(
            job.id,
            job.attempts,
            job.worker,
            job.started_at or now,
            now,
            exit_code,
            outcome,
            error,
            ran_from=ran[0],
            ran_until=ran[1],
        ),
        output,
    )


def finish(
    tx: Transaction, job: Job, r: Result, now: float, max_backoff: float, rand: Callable[[], float]
) -> Job:
    """Apply a worker's report of the job's current attempt: the job ends, runs again at
    once (released), or is scheduled for a retry after its backoff."""
    if r.outcome is Outcome.RELEASED:  # its worker stopped under it: run it again, no blame
        end_attempt(
            tx,
            job,
            now,
            Outcome.RELEASED,
            r.exit_code,
            r.error,
            Output(job.attempts, r.stdout, r.stderr),
            r.ran,
        )
        return move(tx, job, JobStatus.QUEUED, lease_expires_at=None, error=r.error)
    outcome = (
        r.outcome
        if r.outcome in (Outcome.SUCCEEDED, Outcome.TIMED_OUT, Outcome.CANCELLED)
        else Outcome.FAILED
    )
    error = r.error if outcome is not Outcome.SUCCEEDED else ""
    exit_code = (
        r.exit_code
        if r.exit_code is not None
        else (0 if outcome is Outcome.SUCCEEDED else EXIT_CANNOT_RUN)
    )
    output = Output(job.attempts, r.stdout, r.stderr)
    end_attempt(tx, job, now, outcome, exit_code, error, output, r.ran)
    common: dict[str, object] = {
        "exit_code": exit_code,
        "error": error,
        "lease_expires_at": None,
    }
    if outcome is Outcome.SUCCEEDED:
        return move(tx, job, JobStatus.SUCCEEDED, finished_at=now, **common)
    if outcome is Outcome.CANCELLED:
        return move(tx, job, JobStatus.CANCELLED, finished_at=now, **common)
    failures = job.failures + 1
    if failures > job.max_retries:
        return move(tx, job, JobStatus.FAILED, failures=failures, finished_at=now, **common)
    delay = compute_backoff(failures, job.spec.backoff or 0.0, max_backoff, rand=rand)
    if delay <= 0:
        return move(tx, job, JobStatus.QUEUED, failures=failures, **common)
    return move(tx, job, JobStatus.SCHEDULED, failures=failures, run_at=now + delay, **common)


def lose(tx: Transaction, job: Job, now: float, reason: str, max_lost: int) -> Job:
    """End a running attempt as lost; the job runs again unless it was lost too often."""
    end_attempt(tx, job, now, Outcome.LOST, None, reason)
    lost = job.lost + 1
    if lost >= max_lost:
        return move(
            tx,
            job,
            JobStatus.FAILED,
            lost=lost,
            finished_at=now,
            lease_expires_at=None,
            error=f"{reason}; gave up after {lost} lost attempts",
        )
    return move(tx, job, JobStatus.QUEUED, lost=lost, lease_expires_at=None, error=reason)


def late_report(tx: Transaction, job: Job, name: str, r: Result) -> tuple[bool, str]:
    """A report of an attempt that is not the job's current one: kept if the user cancelled
    it while it ran (its output), else refused as stale."""
    attempt = tx.get_attempt(job.id, r.attempt)
    if attempt is not None and attempt.worker == name and attempt.outcome is Outcome.CANCELLED:
        # The user cancelled it while it ran: keep what it printed and when, the status stays.
        ran_from, ran_until = r.ran
        kept = replace(attempt, ran_from=ran_from, ran_until=ran_until)
        tx.finish_attempt(kept, Output(r.attempt, r.stdout, r.stderr))
        return True, ""
    log.warning(
        "job %d: refused report of attempt %d from %s (job is %s at attempt %d)",
        job.id,
        r.attempt,
        name,
        job.status,
        job.attempts,
    )
    return (
        False,
        f"stale attempt {r.attempt}: job {job.id} is {job.status} at attempt {job.attempts}",
    )
