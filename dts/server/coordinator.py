"""The coordinator's rules: submit, claim, report, retry, cancel, leases and recovery.

SQLite (the store) is the truth; Redis only carries job ids to workers. Every decision about a
job is taken here inside one store transaction, and Redis is updated after the commit; when
Redis is away the job stays correct in the store and the reconciler puts it back later.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from queue import Empty, SimpleQueue
from typing import Any

from dts.controls import Held
from dts.domain import (
    ActivityBucket,
    Assignment,
    Attempt,
    Job,
    JobFilter,
    JobSpec,
    JobStatus,
    Lease,
    Outcome,
    Output,
    Result,
    StatCount,
    WorkerInfo,
    WorkerState,
)
from dts.errors import (
    DtsError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    QueueUnavailable,
)
from dts.queue import JobQueue, QueuedJob, is_job_id
from dts.server.activity import MAX_ACTIVITY_MINUTES, activity_buckets
from dts.server.dependencies import retry_move, settle, settle_ended
from dts.server.observer import Observer, final_pairs
from dts.server.outcomes import end_attempt, finish, late_report, lose, move
from dts.server.queues import QueueControls, gate_claims, held
from dts.server.sessions import check_registration, check_takeover, session_of
from dts.server.settings import Settings
from dts.server.store import Store, Transaction
from dts.server.submits import Earlier, check_submit, store_one
from dts.server.unique import as_answered, check_retry
from dts.server.waiters import MAX_WAIT, Waiters, Waker, check_wait_timeout

log = logging.getLogger("dts.coordinator")

MAX_LIST = 10_000  # jobs in one listing
WORKER_RETENTION = 86400.0  # seconds a stopped or lost worker stays listed
SUBMIT_KEY_RETENTION = 86400.0  # seconds a submit's key keeps a retry from storing it again


class Coordinator:
    """Owns every job state change. Thread-safe; gRPC threads and background loops call it."""

    def __init__(
        self,
        store: Store,
        queue: JobQueue,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.queue = queue
        self.settings = settings
        self.clock = clock
        self.rand = rand
        self.accepting = True
        self.due_changed = threading.Event()  # wakes the scheduler when a retry or delay is added
        self.reconcile_needed = threading.Event()
        self._redis_up: bool | None = None
        self.waiters = Waiters(settings.max_waiters)
        self.controls = QueueControls(store, clock)  # pause, resume, run limits
        # submitted jobs on their way to Redis, when an enqueuer thread takes them (the server)
        self.handoff: SimpleQueue[list[Job]] | None = None
        self.observer = Observer()  # the metrics, when the server serves them
        st = settings
        self._defaults = (st.default_retries, st.default_backoff, st.default_timeout)

    # ---- client-facing --------------------------------------------------------------------

    def submit(self, specs: Sequence[JobSpec], key: str = "") -> list[Job]:
        """Store the jobs (durable when this returns) and queue the ones due now. A submit
        whose `key` an earlier one had gets that one's jobs, as they are now."""
        (outcome,) = self.store_submits([specs], [key])
        if isinstance(outcome, DtsError):
            raise outcome
        self.queue_submitted(outcome)
        return outcome

    def store_submits(
        self, batches: Sequence[Sequence[JobSpec]], keys: Sequence[str] = ()
    ) -> list[list[Job] | DtsError]:
        """Store several submits in one transaction (one commit for all: group commit).

        Each batch is judged on its own: a refused one gets its error in its place and keeps
        nothing; the others are stored. A batch with the key (`keys`, in step with `batches`;
        '' for none) of an earlier submit stores nothing and gets the earlier one's jobs.
        `queue_submitted` must follow for the jobs returned.
        """
        outcomes: list[list[Job] | DtsError] = []
        valid: list[tuple[Sequence[JobSpec], str]] = []
        for specs, key in zip(batches, [*keys, *[""] * (len(batches) - len(keys))], strict=True):
            try:
                check_submit(specs, key, self.accepting)
            except DtsError as e:
                outcomes.append(e)
                continue
            outcomes.append([])
            valid.append((specs, key))
        if not valid:
            return outcomes
        now = self.clock()
        with self.store.transaction() as tx:
            stored = [store_one(tx, specs, key, now, self._defaults) for specs, key in valid]
        answers = [self._earlier(s) if isinstance(s, Earlier) else s for s in stored]
        if self.observer.active:
            self.observer.submitted([j for s in stored if isinstance(s, list) for j in s])
        if log.isEnabledFor(logging.INFO):
            for jobs in stored:
                for job in jobs if isinstance(jobs, list) else ():
                    if not job.existing:
                        log.info("job %d %s: %s", job.id, job.status, job.spec.display[:200])
        it = iter(answers)
        return [o if isinstance(o, DtsError) else next(it) for o in outcomes]

    def _earlier(self, earlier: Earlier) -> list[Job] | DtsError:
        """The jobs of an earlier submit with the same key, as they are now."""
        found = self.store.statuses(earlier.ids)
        if len(found) != len(set(earlier.ids)):  # a unique key may name one job twice
            return FailedPrecondition("the jobs of an earlier submit with this key are gone")
        log.info("a submit repeated the key of jobs %s; they are not stored again", earlier)
        return as_answered([found[i] for i in earlier.ids], earlier.at)

    def queue_submitted(self, jobs: Sequence[Job]) -> None:
        """After a submit's commit: put its due jobs in Redis (through the enqueuer thread, when
        the server runs one, so the submitter's answer need not wait), tell the scheduler of
        the rest. Jobs found by their unique key (`existing`) are where they belong already."""
        jobs = [j for j in jobs if not j.existing]
        due = [j for j in jobs if j.status is JobStatus.QUEUED]
        if due:
            if self.handoff is not None:
                self.handoff.put(due)
            else:
                self._enqueue(due)
        if len(due) < len(jobs):
            self.due_changed.set()

    def enqueue_handed_off(self, timeout: float) -> int:
        """The enqueuer's work: wait up to `timeout` for submitted jobs, then put every batch
        waiting by then in Redis in one go; returns how many jobs."""
        assert self.handoff is not None
        try:
            first = self.handoff.get(timeout=timeout)
        except Empty:
            return 0
        jobs = list(first)
        while True:
            try:
                jobs += self.handoff.get_nowait()
            except Empty:
                break
        self._enqueue(jobs)
        return len(jobs)

    def get(self, job_id: int) -> Job:
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id}")
        return job

    def wait(self, job_id: int, timeout: float) -> Job:
        """The job once final, or as it is after `timeout` seconds (capped). Blocks a thread:
        the server's WaitJob waits without one, through add_waiter."""
        check_wait_timeout(timeout)
        event = threading.Event()
        self.add_waiter(job_id, event)
        try:
            job = self.get(job_id)
            if not job.status.final:
                event.wait(min(timeout, MAX_WAIT))
                job = self.get(job_id)
            return job
        finally:
            self.remove_waiter(job_id, event)

    def add_waiter(self, job_id: int, waker: Waker) -> None:
        """Have `waker.set()` called when the job may have become final (bounded: see Waiters)."""
        self.waiters.add(job_id, waker)

    def remove_waiter(self, job_id: int, waker: Waker) -> None:
        self.waiters.remove(job_id, waker)

    def list_jobs(
        self, status: JobStatus | None, queue: str | None, limit: int, **more: Any
    ) -> list[Job]:
        """The newest jobs matching; `more`: the other JobFilter fields (name, before_id,
        since, until), None for any."""
        if not 0 <= limit <= MAX_LIST:
            raise InvalidArgument(f"limit must be between 1 and {MAX_LIST}, got {limit}")
        if (more.get("before_id") or 0) < 0:
            raise InvalidArgument(f"before_id must not be negative, got {more['before_id']}")
        return self.store.list_jobs(JobFilter(status, queue or None, limit or 50, **more))

    def activity(self, minutes: int) -> list[ActivityBucket]:
        """Jobs finished per minute over the last `minutes` (60 when 0), oldest first, one
        bucket for every minute (the current, partial one last)."""
        if not 0 <= minutes <= MAX_ACTIVITY_MINUTES:
            raise InvalidArgument(
                f"minutes must be between 1 and {MAX_ACTIVITY_MINUTES}, got {minutes}"
            )
        return activity_buckets(self.store, self.clock(), minutes or 60)

    def history(self, job_id: int) -> list[Attempt]:
        self.get(job_id)
        return self.store.attempts(job_id)

    def logs(self, job_id: int, attempt: int) -> Output:
        job = self.get(job_id)
        if attempt < 0:
            raise InvalidArgument(f"attempt must be positive, got {attempt}")
        number = attempt or job.attempts
        if number == 0:
            raise NotFound(f"job {job_id} has not started yet")
        output = self.store.output(job_id, number)
        if output is None:
            raise NotFound(f"job {job_id} has no attempt {number} (it has {job.attempts})")
        return output

    def cancel(self, job_id: int) -> Job:
        now = self.clock()
        with self.store.transaction() as tx:
            job = self._get(tx, job_id)
            if job.status.final:
                raise FailedPrecondition(f"job {job_id} is already {job.status}")
            if job.status is JobStatus.RUNNING:
                end_attempt(tx, job, now, Outcome.CANCELLED, None, "cancelled by user")
            job = move(
                tx,
                job,
                JobStatus.CANCELLED,
                finished_at=now,
                error="cancelled by user",
                lease_expires_at=None,
            )
            settled = settle(tx, [job.id], now)  # its dependents: cancelled too, or released
        if job.status is JobStatus.CANCELLED:
            self._redis(lambda: self.queue.remove(job.spec.queue, job.id))
        self.observer.ended(final_pairs([job]))
        self._notify([job.id])
        self._after(settled)
        return job

    def retry(self, job_id: int) -> Job:
        with self.store.transaction() as tx:
            job = self._get(tx, job_id)
            if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
                raise FailedPrecondition(
                    f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried"
                )
            check_retry(tx, job)
            job = retry_move(tx, job)  # queued, or waiting for its dependencies again
        self._after([job])
        return job

    def workers(self) -> list[WorkerInfo]:
        return self.store.workers()

    def stats(self) -> list[StatCount]:
        return self.store.stats()

    # ---- worker-facing --------------------------------------------------------------------

    def register(
        self,
        name: str,
        host: str,
        pid: int,
        concurrency: int,
        queues: Sequence[str],
        credential: str = "",
    ) -> str:
        """Start a session for worker `name`; returns its id. `credential` is a non-secret name
        of the token the worker presented ('' without tokens): a name whose session is alive
        is refused to another credential (PERMISSION_DENIED), and taken over at once by the
        same one (a restart)."""
        check_registration(name, host, concurrency, queues)
        session = uuid.uuid4().hex
        now = self.clock()
        requeued: list[Job] = []
        with self.store.transaction() as tx:
            check_takeover(tx.get_worker(name), credential, now, self.settings.worker_timeout)
            # A new registration under a known name is that worker restarted: whatever its
            # previous life was running is gone, so recover it now instead of after the lease.
            for old in self.store.running_of(name):
                requeued.append(
                    lose(tx, old, now, f"worker {name} restarted", self.settings.max_lost)
                )
            lost = len(requeued)
            requeued += settle_ended(tx, requeued, now)
            tx.save_worker(
                WorkerInfo(
                    name,
                    host,
                    pid,
                    session,
                    concurrency,
                    tuple(queues),
                    WorkerState.IDLE,
                    0,
                    now,
                    now,
                    credential,
                    self.settings.server,
                )
            )
        log.info(
            "worker %s registered (host %s, pid %d, concurrency %d, queues %s)",
            name,
            host,
            pid,
            concurrency,
            ",".join(queues),
        )
        if lost:
            self.observer.lost(lost)
        self._after(requeued)
        return session

    def heartbeat(
        self, name: str, session: str, leases: Sequence[Lease], draining: bool
    ) -> tuple[list[Lease], Held]:
        """Renew the worker's leases; returns the ones it must stop (no longer its own), and
        which of its queues are held (paused or full)."""
        now = self.clock()
        until = now + self.settings.worker_timeout
        stale = []
        # soft state: after a power loss leases get a full grace at start (grace_leases)
        with self.store.transaction(durable=False) as tx:
            worker = session_of(tx, name, session)
            for lease in leases:
                if not tx.renew_lease(lease.job_id, lease.attempt, name, until):
                    stale.append(lease)
            state = (
                WorkerState.DRAINING
                if draining
                else WorkerState.BUSY
                if leases
                else WorkerState.IDLE
            )
            if worker.state is WorkerState.LOST:
                log.info("worker %s is back", name)
            hints = held(tx, worker.queues)
            tx.save_worker(
                replace(
                    worker,
                    state=state,
                    running=len(leases),
                    last_heartbeat=now,
                    server=self.settings.server,
                )
            )
        return stale, hints

    def exchange(
        self, name: str, session: str, results: Sequence[Result], job_ids: Sequence[int]
    ) -> tuple[list[tuple[bool, str]], list[Assignment], Held]:
        """Record finished attempts and claim new jobs, in one transaction.

        A result with a stale fencing token is refused. A claim is a compare-and-set
        queued -> running that starts a numbered attempt; ids that are not claimable
        (delivered twice, cancelled) are left out, and so are ids of a held queue (paused, or
        at its limit): those go back to the queue at once. Last: the worker's held queues.
        """
        now = self.clock()
        acks: list[tuple[bool, str]] = []
        changed: list[Job] = []
        job_ids = [i for i in job_ids if is_job_id(i)]  # no other number names a job
        with self.store.transaction() as tx:
            worker = session_of(tx, name, session)
            # the common case in bulk: a success from the worker that holds the attempt
            ok = [r for r in results if r.outcome is Outcome.SUCCEEDED and is_job_id(r.job_id)]
            succeeded = tx.finish_succeeded(name, ok, now) if ok else {}
            for r in results:
                if (r.job_id, r.attempt) in succeeded and r.outcome is Outcome.SUCCEEDED:
                    acks.append((True, ""))
                    continue
                job = tx.get_job(r.job_id) if is_job_id(r.job_id) else None
                if job is None:
                    acks.append((False, f"no job with id {r.job_id}"))
                elif (
                    job.status is not JobStatus.RUNNING
                    or job.attempts != r.attempt
                    or job.worker != name
                ):
                    acks.append(late_report(tx, job, name, r))
                else:
                    changed.append(finish(tx, job, r, now, self.settings.max_backoff, self.rand))
                    acks.append((True, ""))
            changed += settle_ended(tx, changed, now, (job_id for job_id, _ in succeeded))
            # a claim is a compare-and-set queued -> running that starts a numbered attempt;
            # ids that are not claimable (delivered twice, cancelled, of a queue the worker
            # did not register with) are left out
            until = now + self.settings.worker_timeout
            gated, back = gate_claims(tx, worker.queues, job_ids)  # paused, or at a limit
            job_ids = gated.allowed
            assignments = tx.claim_queued(job_ids, name, worker.queues, now, until)
            foreign = (
                _foreign(tx, job_ids, assignments, worker.queues)
                if len(assignments) < len(job_ids)
                else []
            )
        if foreign:
            log.warning(
                "worker %s (queues %s) claimed job(s) of other queues: %s; refused (a misrouted "
                "id, or a worker that is not what it claims to be)",
                name,
                ",".join(worker.queues),
                ", ".join(f"{j.id} ({j.spec.queue})" for j in foreign),
            )
        if log.isEnabledFor(logging.INFO):
            for key in sorted(succeeded):
                log.info("job %d running -> succeeded worker=%s attempt=%d", key[0], name, key[1])
            for a in assignments:
                log.info("job %d queued -> running worker=%s attempt=%d", a.job_id, name, a.attempt)
        self.observer.exchanged(results, succeeded, changed, assignments, now)
        self._after(changed)
        self._notify([job_id for job_id, _ in succeeded])
        if back:  # at their place in the queue again (it is sorted by priority and id)
            self._redis(lambda: self.queue.enqueue(back))
        return acks, assignments, gated.held

    def unregister(self, name: str, session: str) -> None:
        with self.store.transaction() as tx:
            worker = session_of(tx, name, session)
            tx.save_worker(
                replace(worker, state=WorkerState.STOPPED, running=0, last_heartbeat=self.clock())
            )
        log.info("worker %s stopped", name)

    # ---- background duties ----------------------------------------------------------------

    def grace_leases(self) -> int:
        """At start-up: give running jobs a full lease to let their workers reach us again.

        While the server was down nobody could renew a lease; without this, every job that ran
        through a restart would be declared lost at once and run twice.
        """
        with self.store.transaction() as tx:
            n = tx.extend_leases(self.clock() + self.settings.worker_timeout)
        if n:
            log.info(
                "%d running job(s) get %gs for their workers to reconnect",
                n,
                self.settings.worker_timeout,
            )
        return n

    def promote_due(self, limit: int = 1000) -> int:
        """Queue scheduled jobs whose time has come; returns how many."""
        now = self.clock()
        ids = self.store.due_jobs(now, limit)
        if not ids:
            return 0
        moved = []
        with self.store.transaction() as tx:
            for job_id in ids:
                job = tx.get_job(job_id)
                if job is not None and job.status is JobStatus.SCHEDULED:
                    moved.append(move(tx, job, JobStatus.QUEUED, run_at=None))
        self._enqueue(moved)
        return len(moved)

    def reap_leases(self, limit: int = 1000) -> int:
        """Recover running jobs whose worker stopped renewing the lease."""
        now = self.clock()
        ids = self.store.expired_leases(now, limit)
        requeued: list[Job] = []
        if ids:
            with self.store.transaction() as tx:
                for job_id in ids:
                    job = tx.get_job(job_id)
                    if job is None or job.status is not JobStatus.RUNNING:
                        continue
                    if job.lease_expires_at is None or job.lease_expires_at >= now:
                        continue
                    silent = self.settings.worker_timeout
                    reason = f"worker {job.worker} lost (no heartbeat for {silent:g}s)"
                    requeued.append(lose(tx, job, now, reason, self.settings.max_lost))
                lost = len(requeued)
                requeued += settle_ended(tx, requeued, now)
            if lost:
                self.observer.lost(lost)
            self._after(requeued)
        self._mark_lost_workers(now)
        return len(ids)

    def forget_submit_keys(self) -> int:
        """Drop the keys of submits older than SUBMIT_KEY_RETENTION; returns how many."""
        with self.store.transaction() as tx:
            return tx.forget_submit_keys(self.clock() - SUBMIT_KEY_RETENTION)

    def recover_inflight(self, limit: int = 1000) -> int:
        """Put back ids a worker took from Redis but never claimed (it died in between)."""
        try:
            ids = self.queue.expired_inflight(limit)
            if not ids:
                return 0
            jobs = self.store.statuses(ids)
            back = [j for j in jobs.values() if j.status is JobStatus.QUEUED]
            self._enqueue(back)
            self.queue.ack(ids)
            for job in back:
                log.info("job %d taken from Redis but never claimed: queued again", job.id)
            return len(back)
        except QueueUnavailable as e:
            self._redis_down(e)
            return 0

    def check_redis(self) -> None:
        """Notice a Redis that restarted empty (its epoch key is gone) and refill it."""
        try:
            epoch = self.queue.epoch()
            if epoch is None:
                self.queue.set_epoch(uuid.uuid4().hex)
                self.reconcile_needed.set()
            self._redis_back()
        except QueueUnavailable as e:
            self._redis_down(e)

    def reconcile(self, chunk: int = 5000) -> int:
        """Make sure every queued job's id is in Redis; returns how many were missing."""
        after, total = 0, 0
        try:
            while True:
                jobs = self.store.queued(after, chunk)
                if not jobs:
                    break
                # a pop's deadline is at most a lease ahead; one further off was never a pop's
                taken = self.queue.inflight([j.id for j in jobs], self.settings.inflight_grace)
                total += self.queue.enqueue(
                    [
                        QueuedJob(j.id, j.spec.queue, j.spec.priority)
                        for j in jobs
                        if j.id not in taken
                    ]
                )
                after = jobs[-1].id
        except QueueUnavailable as e:
            self._redis_down(e)
            self.reconcile_needed.set()
        return total

    def wake_waiters(self) -> None:
        """Answer every pending WaitJob now, with the job as it is (used when stopping)."""
        self.waiters.notify(self.waiters.job_ids())

    def wake_finished(self) -> None:
        """Wake the waiters of jobs found final (they may have ended through another server)."""
        waited = self.waiters.job_ids()
        if waited:
            jobs = self.store.statuses(waited)
            self.waiters.hand_over(job for job in jobs.values() if job.status.final)

    def next_due(self) -> float | None:
        return self.store.next_run_at()

    # ---- internals ------------------------------------------------------------------------

    def _get(self, tx: Transaction, job_id: int) -> Job:
        job = tx.get_job(job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id}")
        return job

    def _mark_lost_workers(self, now: float) -> None:
        """Mark silent workers lost; forget stopped or lost ones after WORKER_RETENTION."""
        limit = now - self.settings.worker_timeout
        gone = (WorkerState.LOST, WorkerState.STOPPED)
        workers = self.store.workers()
        stale = [w for w in workers if w.last_heartbeat < limit and w.state not in gone]
        old = [w for w in workers if w.last_heartbeat < now - WORKER_RETENTION and w.state in gone]
        if not stale and not old:
            return
        with self.store.transaction() as tx:
            for w in stale:
                tx.save_worker(replace(w, state=WorkerState.LOST))
                log.warning(
                    "worker %s lost (no heartbeat for %.0fs)", w.name, now - w.last_heartbeat
                )
            for w in old:
                tx.delete_worker(w.name)
                log.info("worker %s forgotten (%s for a day)", w.name, w.state)

    def _after(self, jobs: Sequence[Job]) -> None:
        """Tell Redis, the scheduler, the observer and waiters about jobs changed by a
        committed transaction."""
        if self.observer.active:
            self.observer.ended(final_pairs(jobs))
        self._enqueue([j for j in jobs if j.status is JobStatus.QUEUED])
        if any(j.status is JobStatus.SCHEDULED for j in jobs):
            self.due_changed.set()
        self._notify([j.id for j in jobs if j.status.final])

    def _enqueue(self, jobs: Sequence[Job]) -> None:
        items = [QueuedJob(j.id, j.spec.queue, j.spec.priority) for j in jobs]
        if items:
            self._redis(lambda: self.queue.enqueue(items))

    def _redis(self, op: Callable[[], object]) -> None:
        try:
            op()
            self._redis_back()
        except QueueUnavailable as e:
            self._redis_down(e)
            self.reconcile_needed.set()  # the store is right; Redis catches up later

    def _redis_down(self, e: Exception) -> None:
        self.observer.redis_error()
        if self._redis_up is not False:
            log.error("redis unavailable: %s", e)
        self._redis_up = False

    def _redis_back(self) -> None:
        if self._redis_up is False:
            log.info("redis available again")
            self.reconcile_needed.set()
        self._redis_up = True

    def _notify(self, job_ids: Sequence[int]) -> None:
        """Wake the waiters of jobs that a commit just ended, handing them the jobs: read here,
        in the thread of the commit, only for jobs somebody waits for, so the waiting call
        answers at once instead of reading the job in a thread of its own."""
        waited = self.waiters.waited(job_ids)
        if not waited:
            return
        try:
            jobs = self.store.statuses(waited)
        except DtsError:  # the commit stands; the waiting calls read the jobs themselves
            self.waiters.notify(waited)
            return
        self.waiters.hand_over(jobs.values())
        self.waiters.notify([i for i in waited if i not in jobs])  # gone meanwhile (purged)


FOREIGN_CHECKS = 100  # unclaimed ids of one exchange looked at for the warning about them


def _foreign(
    tx: Transaction, job_ids: Sequence[int], claimed: Sequence[Assignment], queues: Sequence[str]
) -> list[Job]:
    """Jobs among the ids a worker claimed in vain that belong to queues it does not serve
    (the first FOREIGN_CHECKS unclaimed ids are looked at: this only feeds a warning)."""
    taken = {a.job_id for a in claimed}
    unclaimed = list(dict.fromkeys(i for i in job_ids if i not in taken))[:FOREIGN_CHECKS]
    jobs = (tx.get_job(i) for i in unclaimed)
    return [j for j in jobs if j is not None and j.spec.queue not in queues]
