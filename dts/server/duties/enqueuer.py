"""The enqueuer duty: submitted jobs to Redis right after their commit."""

from __future__ import annotations

import queue

from dts.server.coordinator import Coordinator
from dts.server.duties.loop import Loop


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
