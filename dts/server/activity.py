"""The overview's chart data: jobs finished per minute by final status, over a recent span,
from one range read of the jobs_finished index."""

from __future__ import annotations

from typing import Final

from dts.domain import ActivityBucket, JobStatus
from dts.server.store import Store

MAX_ACTIVITY_MINUTES: Final = 1440  # a day


def activity_buckets(store: Store, now: float, minutes: int) -> list[ActivityBucket]:
    """One bucket per minute for the last `minutes` minutes (the current, partial minute
    last), empty minutes included, so a chart's x axis is the bucket's index."""
    last = int(now // 60)
    first = last - minutes + 1
    counts: dict[int, dict[JobStatus, int]] = {m: {} for m in range(first, last + 1)}
    for minute, status, count in store.activity(first * 60.0):
        if minute in counts:  # a clock step can put a finish in the future: left out
            counts[minute][status] = counts[minute].get(status, 0) + count
    return [
        ActivityBucket(
            start=minute * 60.0,
            succeeded=by.get(JobStatus.SUCCEEDED, 0),
            failed=by.get(JobStatus.FAILED, 0),
            cancelled=by.get(JobStatus.CANCELLED, 0),
        )
        for minute, by in counts.items()
    ]
