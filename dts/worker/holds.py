"""The worker's view of its held queues: the ones the server says are paused or at their run
limit, which the worker pops no ids from until an answer says they are free again."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence

log = logging.getLogger("dts.worker")


class Holds:
    """Held queues as the latest server answer (Exchange or Heartbeat) said. Thread-safe:
    slots read it, the heartbeat and the slots' answers replace it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._paused: frozenset[str] = frozenset()
        self._full: frozenset[str] = frozenset()
        self.version = 0  # changes with every change of the held queues

    def learn(self, paused: Iterable[str], full: Iterable[str]) -> None:
        """What an answer said (an answer that says nothing: no queue is held)."""
        new_paused, new_full = frozenset(paused), frozenset(full)
        with self._cond:
            if (new_paused, new_full) == (self._paused, self._full):
                return
            for name in sorted(new_paused - self._paused):
                log.info("queue %s is paused: taking none of its jobs", name)
            for name in sorted(new_full - self._full - new_paused):
                log.info("queue %s is at its run limit: taking none of its jobs for now", name)
            freed = (self._paused | self._full) - (new_paused | new_full)
            for name in sorted(freed):
                log.info("queue %s is open again", name)
            self._paused, self._full = new_paused, new_full
            self.version += 1
            self._cond.notify_all()

    def open(self, queues: Sequence[str]) -> list[str]:
        """Those of `queues` (in order) that are not held."""
        held = self._paused | self._full
        return [q for q in queues if q not in held]

    def wait(self, timeout: float) -> None:
        """Wait until the held queues change, or `timeout` seconds."""
        with self._cond:
            self._cond.wait(timeout)
