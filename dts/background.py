"""The server's background loops: enqueuer, due-job scheduler, lease reaper, Redis reconciler.

Each is a small component with start() and stop(); the server composes them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from dts.coordinator import Coordinator

log = logging.getLogger("dts.background")


class Loop:
    """A daemon thread that calls `tick()` until stopped; `tick()` returns seconds to sleep."""

    name = "loop"

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dts-{self.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.wake()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wake(self) -> None:
        """Cut the current sleep short (subclasses wait on more than the stop event)."""

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self.tick()
            except Exception:  # a loop must survive a bad tick (store busy, a bug): log, go on
                log.exception("%s failed; retrying", self.name)
                delay = 1.0
            self.sleep(delay)

    def sleep(self, delay: float) -> None:
        self._stop.wait(delay)

    def tick(self) -> float:
        raise NotImplementedError


class Enqueuer(Loop):
    """Puts submitted jobs in Redis right after their commit, off the submitter's answer path
    (the reconciler puts back any that a crash or a Redis outage keeps from getting there)."""

    name = "enqueuer"

    def __init__(self, coordinator: Coordinator) -> None:
        super().__init__(coordinator)
        coordinator.handoff = queue.SimpleQueue()

    def wake(self) -> None:
        assert self.c.handoff is not None
        self.c.handoff.put([])

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        while self.c.enqueue_handed_off(0):  # what came in while stopping
            pass

    def tick(self) -> float:
        self.c.enqueue_handed_off(1.0)
        return 0.0


class DueScheduler(Loop):
    """Moves scheduled jobs (delays, retry backoffs) to the queue when their time comes."""

    name = "scheduler"
    max_sleep = 1.0

    def wake(self) -> None:
        self.c.due_changed.set()

    def sleep(self, delay: float) -> None:
        self.c.due_changed.wait(delay)
        self.c.due_changed.clear()

    def tick(self) -> float:
        if self.c.promote_due() >= 1000:
            return 0.0  # more are due: go again at once
        nxt = self.c.next_due()
        if nxt is None:
            return self.max_sleep
        return max(0.0, min(self.max_sleep, nxt - time.time()))


class LeaseReaper(Loop):
    """Recovers jobs of lost workers and ids taken from Redis but never claimed."""

    name = "reaper"

    def tick(self) -> float:
        self.c.reap_leases()
        self.c.recover_inflight()
        return max(0.05, min(1.0, self.c.cfg.worker_timeout / 4))


class Reconciler(Loop):
    """Keeps Redis in step with the store: refills it after a restart, flush or outage."""

    name = "reconciler"

    def __init__(self, coordinator: Coordinator) -> None:
        super().__init__(coordinator)
        self._last_full = 0.0

    def tick(self) -> float:
        self.c.check_redis()
        now = time.monotonic()
        due = now - self._last_full >= self.c.cfg.reconcile_interval
        if self.c.reconcile_needed.is_set() or due:
            self.c.reconcile_needed.clear()
            self._last_full = now
            missing = self.c.reconcile()
            if missing:
                log.warning("redis was missing %d queued jobs; they are queued again", missing)
        return 1.0
