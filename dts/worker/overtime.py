"""A slot's overtime watch: work that falls due while the slot's thread waits for a job, done
by a thread of its own (see SlotLoop._overtime)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("dts.worker")

Due = Callable[[], float | None]  # does what is due; returns seconds to the next call, or None


class Overtime:
    """Calls a `due` function after a delay while a job runs, and again as it asks, until
    `end`. `due` runs under a lock that `end` takes, so once `end` returns it neither runs nor
    will: the slot's thread and the watch never touch the slot's state at once."""

    def __init__(self, name: str) -> None:
        self._cond = threading.Condition()
        self._due: Due | None = None
        self._at = 0.0
        self._wakes = float("inf")  # when the watch's thread wakes by itself (inf: only if told)
        # One thread per slot, for its whole life, started now: a slot makes its watch before
        # its first job moves the slot's thread into the job's cgroup, where a thread it
        # started later would be born (and every look for what is left of a job there would
        # have to tell it from the job's processes).
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def start(self, delay: float, due: Due) -> None:
        """Call `due` in `delay` seconds unless `end` comes first."""
        with self._cond:
            self._due, self._at = due, time.monotonic() + delay
            if self._at < self._wakes:  # else it wakes in time anyway: no hand-off per job
                self._cond.notify()

    def end(self) -> None:
        """The job ended: no more calls (waits for one under way)."""
        with self._cond:
            self._due = None

    def _run(self) -> None:
        with self._cond:
            while True:
                if self._due is None:
                    self._wakes = float("inf")
                    self._cond.wait()
                    continue
                left = self._at - time.monotonic()
                if left > 0:
                    self._wakes = self._at
                    self._cond.wait(left)
                    continue
                try:
                    after = self._due()
                except Exception:  # a bug here must not stop the watch: the slot goes on
                    log.exception("a slot's overtime work failed")
                    after = None
                if after is None:
                    self._due = None
                else:
                    self._at = time.monotonic() + after
