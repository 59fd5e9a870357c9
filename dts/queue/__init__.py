"""The queue between the server and its workers, as the coordinator sees it: the `JobQueue`
protocol and what passes through it. Only job ids travel; `dts.queue.redis` is the one
implementation, and a test may stand an in-memory one in its place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

ID_BITS = 43  # job ids below 2**43 keep every score exact in a double
ID_LIMIT = 1 << ID_BITS


def is_job_id(value: int) -> bool:
    """Whether `value` can be a job id: positive and below 2**ID_BITS."""
    return 0 < value < ID_LIMIT


@dataclass(frozen=True)
class QueuedJob:
    """What the queue needs to know to place a job."""

    job_id: int
    queue: str
    priority: int


class JobQueue(Protocol):
    """The queue operations the coordinator relies on. Every method raises
    `dts.errors.QueueUnavailable` when the queue cannot be reached or fails, nothing else."""

    def enqueue(self, jobs: Sequence[QueuedJob]) -> int:
        """Put jobs in their queues (idempotent) and wake idle workers; how many were new."""
        ...

    def remove(self, queue: str, job_id: int) -> None:
        """Drop a job id from its queue (e.g. cancelled before it started)."""
        ...

    def expired_inflight(self, limit: int) -> list[int]:
        """Ids taken from a queue whose taker did not acknowledge them in time."""
        ...

    def ack(self, job_ids: Sequence[int]) -> None:
        """The ids were claimed (or found unclaimable): they need no recovery."""
        ...

    def inflight(self, job_ids: Sequence[int], within: float = ...) -> set[int]:
        """Those of `job_ids` a worker has taken and not yet acknowledged (deadline at most
        `within` seconds ahead)."""
        ...

    def epoch(self) -> str | None:
        """The mark the server left in the queue's store: gone means it lost its data."""
        ...

    def set_epoch(self, value: str) -> None: ...
