"""Queue controls as plain data: a queue's setting (paused, run limit), its listing row, and the
claim gate's rule (which claimed ids a queue's setting lets run now). No I/O here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from dts.errors import InvalidArgument

MAX_RUN_LIMIT: Final = 1_000_000  # jobs of one queue running at once, at most, when limited


@dataclass(frozen=True)
class QueueSetting:
    """What an operator set on a queue. A queue with no stored setting runs freely."""

    name: str
    paused: bool = False
    limit: int | None = None  # jobs of this queue running at once across all workers; None: any
    updated_at: float = 0.0

    @property
    def free(self) -> bool:
        """Nothing set: the setting need not be kept."""
        return not self.paused and self.limit is None


@dataclass(frozen=True)
class QueueInfo:
    """One row of `dts-client queues`: a queue's jobs by status, its setting, its workers."""

    name: str
    queued: int = 0
    running: int = 0
    scheduled: int = 0
    waiting: int = 0  # jobs waiting for others to finish: none until jobs have dependencies
    paused: bool = False
    limit: int | None = None
    workers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Held:
    """A worker's queues it should take no ids from for now: paused ones, and full ones (as
    many of its jobs run as its limit allows). A worker learns this from the server's answers
    and pops from the other queues only, until an answer says otherwise."""

    paused: tuple[str, ...] = ()
    full: tuple[str, ...] = ()


@dataclass(frozen=True)
class Gate:
    """The claim gate's decision on the ids a worker claims: the ids that may be claimed (in
    the order given), the ids held back (to go back to the queue at once), and what the
    worker's queues are after the claim."""

    allowed: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    held: Held = Held()


def validate_run_limit(limit: int | None) -> None:
    """A run limit is a positive number of jobs (to let none run, pause the queue), or None."""
    if limit is not None and not 1 <= limit <= MAX_RUN_LIMIT:
        raise InvalidArgument(
            f"a queue's limit must be between 1 and {MAX_RUN_LIMIT} (or none), got {limit}"
        )


def held_of(settings: Mapping[str, QueueSetting], running: Mapping[str, int]) -> Held:
    """Which of the queues with `settings` are held, with `running` jobs of each now."""
    paused = sorted(n for n, s in settings.items() if s.paused)
    full = sorted(
        n
        for n, s in settings.items()
        if not s.paused and s.limit is not None and running.get(n, 0) >= s.limit
    )
    return Held(tuple(paused), tuple(full))


def gate(
    ids: Sequence[int],
    queue_of: Mapping[int, str],
    settings: Mapping[str, QueueSetting],
    running: Mapping[str, int],
) -> Gate:
    """Judge claimed `ids` (in the order the worker took them) against the queues' settings.

    `queue_of` gives the queue of each id still queued (others are left to the claim, which
    skips them); `running` the jobs of each limited queue running now. An id of a paused
    queue is refused; an id of a limited queue is allowed while the queue has room, counting
    the ids allowed before it."""
    room = {
        n: s.limit - running.get(n, 0)
        for n, s in settings.items()
        if s.limit is not None and not s.paused
    }
    allowed: list[int] = []
    refused: list[int] = []
    granted: dict[str, int] = {}
    for job_id in dict.fromkeys(ids):  # an id taken twice is claimed once
        queue = queue_of.get(job_id)
        setting = settings.get(queue) if queue is not None else None
        if setting is None or queue is None:
            allowed.append(job_id)
        elif setting.paused or (queue in room and room[queue] <= 0):
            refused.append(job_id)
        else:
            allowed.append(job_id)
            if queue in room:
                room[queue] -= 1
                granted[queue] = granted.get(queue, 0) + 1
    after = {n: running.get(n, 0) + granted.get(n, 0) for n in settings}
    return Gate(allowed, refused, held_of(settings, after))
