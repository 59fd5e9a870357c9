"""Calls waiting for jobs to end (WaitJob, `submit --wait`): who to wake when a job may have
become final, within a bound, so waiting calls cannot make the server hold unbounded memory."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from dts.domain import Job
from dts.errors import InvalidArgument, ResourceExhausted

MAX_WAIT = 30.0  # seconds one WaitJob call may block


class Waker(Protocol):
    """What waits for a job: a threading.Event, or an asyncio call's wake-up."""

    def set(self) -> None: ...


@runtime_checkable
class Taker(Waker, Protocol):
    """A waker that takes the final job itself, so its call can answer without reading it."""

    def take(self, job: Job) -> None: ...


def check_wait_timeout(timeout: float) -> None:
    if not timeout >= 0:
        raise InvalidArgument(f"timeout must not be negative, got {timeout}")


class Waiters:
    """The wakers of each job, at most `limit` in all. Thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_job: dict[int, list[Waker]] = {}
        self._lock = threading.Lock()
        self._count = 0

    def add(self, job_id: int, waker: Waker) -> None:
        """Have `waker.set()` called (from any thread) when the job may have become final; a
        waiter beyond the limit is refused with ResourceExhausted (the caller retries later)."""
        with self._lock:
            if self._count >= self.limit:
                raise ResourceExhausted(
                    f"too many calls waiting for jobs ({self.limit}); retry later"
                )
            self._by_job.setdefault(job_id, []).append(waker)
            self._count += 1

    def remove(self, job_id: int, waker: Waker) -> None:
        with self._lock:
            wakers = self._by_job.get(job_id, [])
            if waker in wakers:
                wakers.remove(waker)
                self._count -= 1
            if not wakers:
                self._by_job.pop(job_id, None)

    def notify(self, job_ids: Sequence[int]) -> None:
        """Wake every waiter of these jobs."""
        if not job_ids:
            return
        with self._lock:
            for job_id in job_ids:
                for waker in self._by_job.get(job_id, ()):
                    waker.set()

    def hand_over(self, jobs: Iterable[Job]) -> None:
        """Wake every waiter of these jobs, handing each final one to the wakers that take it
        (straight from the commit that ended it: their calls answer without a read)."""
        with self._lock:
            for job in jobs:
                for waker in self._by_job.get(job.id, ()):
                    if job.status.final and isinstance(waker, Taker):
                        waker.take(job)
                    else:
                        waker.set()

    def waited(self, job_ids: Iterable[int]) -> list[int]:
        """Those of `job_ids` somebody waits for."""
        with self._lock:
            return [i for i in job_ids if i in self._by_job]

    def job_ids(self) -> list[int]:
        """The jobs somebody waits for."""
        with self._lock:
            return list(self._by_job)
