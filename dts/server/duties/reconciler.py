"""The reconciler duty: Redis kept in step with the store after a restart, flush or outage."""

from __future__ import annotations

import logging
import time

from dts.server.coordinator import Coordinator
from dts.server.duties.lead import Leadership
from dts.server.duties.loop import Loop

log = logging.getLogger("dts.background")


class Reconciler(Loop):
    """Keeps Redis in step with the store: refills it after a restart, flush or outage."""

    name = "reconciler"

    def __init__(self, coordinator: Coordinator, lead: Leadership, interval: float) -> None:
        super().__init__(coordinator, lead)
        self.interval = interval  # seconds between full checks (--reconcile-interval)
        self._last_full = 0.0

    def tick(self) -> float:
        self.c.check_redis()
        now = time.monotonic()
        due = now - self._last_full >= self.interval
        if self.c.reconcile_needed.is_set() or due:
            self.c.reconcile_needed.clear()
            self._last_full = now
            missing = self.c.reconcile()
            if missing:
                log.warning("redis was missing %d queued jobs; they are queued again", missing)
        return 1.0
