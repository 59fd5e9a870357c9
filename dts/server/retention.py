"""Retention: final jobs deleted with their attempts and output once they finished long
enough ago, in small batches with a pause between them, so submits and claims never wait
long for the store (for the --retain duty and the Admin service's Purge)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from dts.domain import FINAL_STATUSES, JobStatus
from dts.errors import InvalidArgument
from dts.limits import MAX_DURATION, format_duration
from dts.server.store import Store

log = logging.getLogger("dts.retention")

BATCH = 500  # jobs deleted in one transaction
PAUSE = 0.02  # seconds between batches: writers waiting for the store go first
CALL_BUDGET = 5.0  # seconds of purging a Purge call does before it answers "more"


@dataclass(frozen=True)
class PurgeOrder:
    """Which jobs to delete: final ones in `statuses` (all final ones when empty) that
    finished more than `older_than` seconds ago, of `queue` ('' for every queue)."""

    older_than: float
    statuses: frozenset[JobStatus] = frozenset()
    queue: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.older_than) and 0 < self.older_than <= MAX_DURATION):
            raise InvalidArgument(
                f"older_than must be more than 0 seconds and at most 100 years, "
                f"got {self.older_than:g}"
            )
        wrong = sorted(self.statuses - FINAL_STATUSES)
        if wrong:
            raise InvalidArgument(
                f"only final jobs are purged (succeeded, failed, cancelled), not {wrong[0]}"
            )

    def __str__(self) -> str:
        which = ",".join(sorted(self.statuses)) or "final"
        where = f" of queue {self.queue}" if self.queue else ""
        return f"{which} jobs{where} that finished more than {format_duration(self.older_than)} ago"


class Retention:
    """Deletes old final jobs from the store, a batch per transaction."""

    def __init__(
        self,
        store: Store,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.store = store
        self.clock = clock
        self.sleep = sleep

    def cut_off(self, order: PurgeOrder) -> float:
        """The finished_at before which `order`'s jobs are deleted, as of now."""
        return self.clock() - order.older_than

    def batch(self, order: PurgeOrder, before: float) -> int:
        """Delete one batch (at most BATCH jobs) that finished before `before`."""
        return self.store.purge(before, sorted(order.statuses), order.queue, BATCH)

    def purge(self, order: PurgeOrder, budget: float = CALL_BUDGET) -> tuple[int, bool]:
        """Delete batches for up to `budget` seconds; how many, and whether more are left
        (a full last batch: the caller goes on)."""
        before = self.cut_off(order)
        started = time.monotonic()
        total = 0
        while True:
            n = self.batch(order, before)
            total += n
            if n < BATCH:
                return total, False
            if time.monotonic() - started >= budget:
                return total, True
            self.sleep(PAUSE)
