"""dts.server.serving: the queues live workers serve, read at most once a second however many
submits ask, a draining, lost or stopped worker serving none, and a failed read costing no
submit anything."""

from __future__ import annotations

from dts.domain import WorkerInfo, WorkerState
from dts.errors import Unavailable
from dts.server.serving import ServedQueues


def worker(state: WorkerState, *queues: str) -> WorkerInfo:
    return WorkerInfo("w", "h", 1, "s", 1, queues, state, 0, 0.0, 0.0)


class Workers:
    def __init__(self, *workers: WorkerInfo) -> None:
        self.workers = list(workers)
        self.reads = 0
        self.fail = False

    def __call__(self) -> list[WorkerInfo]:
        self.reads += 1
        if self.fail:
            raise Unavailable("database is down")
        return self.workers


def test_only_idle_and_busy_workers_serve() -> None:
    read = Workers(
        worker(WorkerState.IDLE, "a"),
        worker(WorkerState.BUSY, "b", "c"),
        worker(WorkerState.DRAINING, "d"),
        worker(WorkerState.LOST, "e"),
        worker(WorkerState.STOPPED, "f"),
    )
    served = ServedQueues(read, clock=lambda: 0.0)
    assert served.unserved(["f", "a", "b", "c", "d", "e", "x"]) == ["d", "e", "f", "x"]


def test_workers_are_read_once_a_second_however_many_submits_ask() -> None:
    now = [100.0]
    read = Workers(worker(WorkerState.IDLE, "a"))
    served = ServedQueues(read, clock=lambda: now[0])
    for _ in range(1000):
        assert served.unserved(["a"]) == []
    assert read.reads == 1
    read.workers = []  # the worker went away: seen once the reading is a second old
    now[0] += 0.99
    assert served.unserved(["a"]) == []
    now[0] += 0.02
    assert served.unserved(["a"]) == ["a"]
    assert read.reads == 2


def test_a_failed_read_warns_of_nothing_and_is_not_retried_on_every_submit() -> None:
    now = [0.0]
    read = Workers()
    read.fail = True
    served = ServedQueues(read, clock=lambda: now[0])
    assert [served.unserved(["a"]) for _ in range(10)] == [[]] * 10
    assert read.reads == 1
    read.fail = False
    now[0] += 1.0
    assert served.unserved(["a"]) == ["a"]
