"""The coordinator against an in-memory JobQueue: its rules need the queue protocol only, and
a queue that fails costs no job (the store stays the truth, the reconciler puts ids back)."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from dts.domain import Job, JobSpec, JobStatus, Outcome, Result
from dts.errors import QueueUnavailable
from dts.queue import JobQueue, QueuedJob
from dts.server.coordinator import Coordinator
from dts.server.settings import Settings
from dts.server.store.sqlite import SqliteStore


class MemoryQueue:
    """A JobQueue in a dict; `down` makes every operation fail as an unreachable queue does."""

    def __init__(self) -> None:
        self.queues: dict[str, dict[int, int]] = {}  # queue -> job id -> priority
        self.taken: set[int] = set()
        self.mark: str | None = None
        self.down = False

    def _up(self) -> None:
        if self.down:
            raise QueueUnavailable("connection refused")

    def enqueue(self, jobs: Sequence[QueuedJob]) -> int:
        self._up()
        new = 0
        for j in jobs:
            ids = self.queues.setdefault(j.queue, {})
            new += j.job_id not in ids
            ids[j.job_id] = j.priority
        return new

    def remove(self, queue: str, job_id: int) -> None:
        self._up()
        self.queues.get(queue, {}).pop(job_id, None)

    def expired_inflight(self, limit: int) -> list[int]:
        self._up()
        return []

    def ack(self, job_ids: Sequence[int]) -> None:
        self._up()
        self.taken.difference_update(job_ids)

    def inflight(self, job_ids: Sequence[int], within: float = math.inf) -> set[int]:
        self._up()
        return self.taken.intersection(job_ids)

    def epoch(self) -> str | None:
        self._up()
        return self.mark

    def set_epoch(self, value: str) -> None:
        self._up()
        self.mark = value

    def ids(self, queue: str = "default") -> list[int]:
        return sorted(self.queues.get(queue, {}))


@pytest.fixture
def queue() -> MemoryQueue:
    return MemoryQueue()


@pytest.fixture
def coordinator(tmp_path: Path, queue: MemoryQueue) -> Iterator[Coordinator]:
    store = SqliteStore(str(tmp_path / "dts.db"))
    stand_in: JobQueue = queue  # the protocol is all the coordinator needs
    yield Coordinator(store, stand_in, Settings(worker_timeout=8))
    store.close()


def test_submitted_jobs_reach_the_queue_and_a_cancel_takes_them_out(
    coordinator: Coordinator, queue: MemoryQueue
) -> None:
    a, b = coordinator.submit([JobSpec(argv=("true",)), JobSpec(argv=("true",))])
    assert queue.ids() == [a.id, b.id]
    coordinator.cancel(a.id)
    assert queue.ids() == [b.id]


def test_a_queue_that_fails_loses_no_job_and_is_refilled_by_the_reconciler(
    coordinator: Coordinator, queue: MemoryQueue
) -> None:
    # Given a queue that is down when a job is submitted
    queue.down = True
    [job] = coordinator.submit([JobSpec(argv=("true",))])
    # Then the submit still succeeded: the job is stored, queued, and not in the queue
    assert coordinator.get(job.id).status is JobStatus.QUEUED
    assert queue.ids() == []
    # And once the queue is back, the check notices (no epoch: it lost its data) and the
    # reconciler puts the id back
    queue.down = False
    coordinator.check_redis()
    assert coordinator.reconcile_needed.is_set()
    assert coordinator.reconcile() == 1
    assert queue.ids() == [job.id]


def test_derived_timings_come_from_the_lease() -> None:
    assert Settings(worker_timeout=8).heartbeat_interval == 1.0  # at least once a second
    assert Settings(worker_timeout=2).heartbeat_interval == 0.5  # four times a lease
    assert Settings(worker_timeout=0.1).reap_interval == 0.05  # but not busier than 20 Hz
    assert Settings(worker_timeout=30).inflight_grace == 120


class Taking:
    """A waker that takes the final job (as the server's WaitJob does)."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.woken = 0

    def set(self) -> None:
        self.woken += 1

    def take(self, job: Job) -> None:
        self.jobs.append(job)
        self.set()


def test_a_waiter_is_handed_the_job_by_the_commit_that_ends_it(
    coordinator: Coordinator,
) -> None:
    # Given a job claimed by a worker, one waiter that takes jobs and one plain event
    session = coordinator.register("w1", "host", 1, 1, ["default"])
    [job] = coordinator.submit([JobSpec(argv=("true",))])
    _, [claim], _ = coordinator.exchange("w1", session, [], [job.id])
    taker, event = Taking(), threading.Event()
    coordinator.add_waiter(job.id, taker)
    coordinator.add_waiter(job.id, event)
    # When the worker reports its success
    done = Result(job.id, claim.attempt, Outcome.SUCCEEDED, 0, started_at=1.0, finished_at=2.0)
    coordinator.exchange("w1", session, [done], [])
    # Then the taker holds the job as stored, final, without having read it; the event is set
    assert [(j.id, j.status) for j in taker.jobs] == [(job.id, JobStatus.SUCCEEDED)]
    assert taker.jobs[0] == coordinator.get(job.id)
    assert event.is_set()


def test_a_waiter_of_a_job_that_is_not_final_is_only_woken(coordinator: Coordinator) -> None:
    # Given a waiter of a queued job, woken as when the server stops (every waiter at once)
    [job] = coordinator.submit([JobSpec(argv=("true",))])
    taker = Taking()
    coordinator.add_waiter(job.id, taker)
    coordinator.wake_waiters()
    # Then it is woken without a job (its call reads the job as it is)
    assert (taker.woken, taker.jobs) == (1, [])
    # And a cancel, which ends the job, hands it over
    coordinator.cancel(job.id)
    assert [j.status for j in taker.jobs] == [JobStatus.CANCELLED]
