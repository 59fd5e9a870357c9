"""Unit tests of retention's rules (dts.server.retention) and its duty (duties.retainer), on a
store double that records each batch it is asked for."""

from __future__ import annotations

import logging
import math
from collections.abc import Collection
from types import SimpleNamespace
from typing import Any

import pytest

from dts.domain import JobStatus
from dts.errors import InvalidArgument
from dts.server.duties.retainer import Retainer
from dts.server.retention import BATCH, PAUSE, PurgeOrder, Retention

S = JobStatus


class Batches:
    """A store whose purge deletes the given numbers of jobs, one per call, then none."""

    def __init__(self, *counts: int) -> None:
        self.counts = list(counts)
        self.calls: list[tuple[float, list[JobStatus], str, int]] = []

    def purge(self, before: float, statuses: Collection[JobStatus], queue: str, limit: int) -> int:
        self.calls.append((before, list(statuses), queue, limit))
        return self.counts.pop(0) if self.counts else 0


@pytest.mark.parametrize("older_than", [0.0, -1.0, math.nan, math.inf, 101 * 365 * 86400.0])
def test_an_order_needs_a_sensible_age(older_than: float) -> None:
    with pytest.raises(InvalidArgument, match="older_than"):
        PurgeOrder(older_than)


@pytest.mark.parametrize("status", [S.SCHEDULED, S.QUEUED, S.RUNNING])
def test_an_order_takes_final_statuses_only(status: JobStatus) -> None:
    with pytest.raises(InvalidArgument, match=f"only final jobs are purged.*not {status}"):
        PurgeOrder(60.0, frozenset({S.FAILED, status}))


def test_an_order_says_what_it_deletes() -> None:
    assert str(PurgeOrder(2 * 86400)) == "final jobs that finished more than 2d ago"
    order = PurgeOrder(5400, frozenset({S.FAILED, S.CANCELLED}), "batch")
    assert str(order) == "cancelled,failed jobs of queue batch that finished more than 1h30m ago"


def test_a_purge_goes_batch_by_batch_with_a_pause_and_one_cut_off() -> None:
    store = Batches(BATCH, BATCH, 7)
    slept: list[float] = []
    clock = iter([1000.0, 2000.0, 3000.0])  # read once: the cut-off does not move
    retention = Retention(store, lambda: next(clock), slept.append)  # type: ignore[arg-type]
    order = PurgeOrder(100.0, frozenset({S.FAILED}), "q")
    assert retention.purge(order) == (2 * BATCH + 7, False)
    assert store.calls == [(900.0, [S.FAILED], "q", BATCH)] * 3
    assert slept == [PAUSE, PAUSE]


def test_a_purge_answers_more_when_its_time_is_up() -> None:
    store = Batches(BATCH, BATCH)
    retention = Retention(store, lambda: 1000.0, lambda s: None)  # type: ignore[arg-type]
    assert retention.purge(PurgeOrder(1.0), budget=0.0) == (BATCH, True)
    assert len(store.calls) == 1


def retainer(store: Batches, clock: Any, retain: float = 60.0) -> Retainer:
    coordinator = SimpleNamespace(store=store, clock=clock)
    return Retainer(coordinator, SimpleNamespace(), retain, interval=30.0)  # type: ignore[arg-type]


def test_the_duty_deletes_a_batch_a_tick_and_logs_once_a_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Batches(BATCH, BATCH, 3, 0, 2)
    now = [1000.0]
    duty = retainer(store, lambda: now[0])
    caplog.set_level(logging.INFO, "dts.retention")
    # A run: full batches come back at once (after the pause), a short one ends it
    assert [duty.tick(), duty.tick()] == [PAUSE, PAUSE]
    now[0] = 1005.0  # the run keeps the cut-off it started with
    assert duty.tick() == 30.0
    assert [call[0] for call in store.calls] == [940.0] * 3
    assert [r.getMessage() for r in caplog.records] == [
        f"retention: deleted {2 * BATCH + 3} final jobs that finished more than 1m ago"
    ]
    # A run that deletes nothing says nothing; the next one has a cut-off of its own
    caplog.clear()
    assert duty.tick() == 30.0
    assert caplog.records == [] and store.calls[-1][0] == 945.0
    now[0] = 1100.0
    assert duty.tick() == 30.0
    assert [r.getMessage() for r in caplog.records] == [
        "retention: deleted 2 final jobs that finished more than 1m ago"
    ]
    assert store.calls[-1][0] == 1040.0
