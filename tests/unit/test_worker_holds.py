"""A worker's held queues (dts.worker.holds) and its feed popping around them: no id of a
paused or full queue is popped, and a worker whose every queue is held waits for an answer
that frees one instead of asking Redis in a loop."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace
from typing import Any

import pytest

from dts.backoff import Backoff
from dts.worker.feed import HELD_WAIT, Feed
from dts.worker.holds import Holds


class Recorder:
    """A RedisQueue's worker side that records which queues each pop named."""

    def __init__(self) -> None:
        self.pops: list[list[str]] = []
        self.waits: list[float] = []  # each pop's wait for a wake token; 0 for none

    def pop(self, queues: list[str], count: int, lease: float, ack: Any = ()) -> list[int]:
        self.pops.append(list(queues))
        self.waits.append(0.0)
        return []

    def wait_and_pop(
        self, queues: list[str], timeout: float, count: int, lease: float
    ) -> list[int]:
        self.pops.append(list(queues))
        self.waits.append(timeout)
        return []


def feed(holds: Holds) -> tuple[Feed, Recorder]:
    session = SimpleNamespace(link=SimpleNamespace(up=True), holds=holds, lease_seconds=30.0)
    f = Feed(None, "redis://x", ("a", "b", "c"), session, threading.Event())  # type: ignore[arg-type]
    recorder = Recorder()
    f.queue = recorder  # type: ignore[assignment]
    return f, recorder


def test_an_answer_replaces_the_held_queues_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "dts.worker")
    holds = Holds()
    holds.learn(["a"], ["c"])
    assert holds.open(["a", "b", "c"]) == ["b"]
    holds.learn([], ["c"])
    assert holds.open(["a", "b", "c"]) == ["a", "b"]
    holds.learn([], [])  # an answer that names none: every queue is open
    assert holds.open(["a", "b", "c"]) == ["a", "b", "c"]
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "queue a is paused: taking none of its jobs",
        "queue c is at its run limit: taking none of its jobs for now",
        "queue a is open again",
        "queue c is open again",
    ]


def test_the_feed_pops_from_open_queues_only() -> None:
    holds = Holds()
    f, recorder = feed(holds)
    f.idle(Backoff(), [], 4)  # nothing held: it waits up to a second for a wake token
    holds.learn(["b"], [])
    f.take(4, [])
    f.idle(Backoff(), [], 4)  # a change seen: pop at once (a freed queue wakes nobody)
    f.idle(Backoff(), [], 4)  # then wait for wake tokens a little at a time while b is held
    assert recorder.pops == [["a", "b", "c"], ["a", "c"], ["a", "c"], ["a", "c"]]
    assert recorder.waits == [1.0, 0.0, 0.0, HELD_WAIT]


def test_with_every_queue_held_the_feed_waits_for_a_change_without_popping() -> None:
    holds = Holds()
    f, recorder = feed(holds)
    holds.learn(["a", "b"], ["c"])
    waiting = threading.Event()
    original = holds.wait

    def wait(timeout: float) -> None:
        waiting.set()
        original(timeout)

    holds.wait = wait  # type: ignore[method-assign]
    freed = threading.Thread(target=lambda: (waiting.wait(5), holds.learn([], [])))
    freed.start()
    assert f.idle(Backoff(), [], 4) == []  # returns when the answer frees the queues
    freed.join(5)
    assert recorder.pops == []
    f.idle(Backoff(), [], 4)
    assert recorder.pops == [["a", "b", "c"]]
