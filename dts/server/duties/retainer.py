"""The retention duty (--retain): final jobs older than the retention deleted on the lead,
a batch per tick, a run every --retain-interval seconds; one log line per run."""

from __future__ import annotations

import logging

from dts.server.coordinator import Coordinator
from dts.server.duties.lead import Leadership
from dts.server.duties.loop import Loop
from dts.server.retention import BATCH, PAUSE, PurgeOrder, Retention

log = logging.getLogger("dts.retention")


class Retainer(Loop):
    """Deletes final jobs that finished more than `retain` seconds ago. A run fixes its
    cut-off when it starts and deletes a batch per tick, with a short pause between ticks
    (and stops at once when the server stops), until a batch comes back short."""

    name = "retainer"

    def __init__(
        self, coordinator: Coordinator, lead: Leadership, retain: float, interval: float
    ) -> None:
        super().__init__(coordinator, lead)
        self.order = PurgeOrder(retain)
        self.interval = interval
        self.retention = Retention(coordinator.store, coordinator.clock)
        self._before: float | None = None  # the cut-off of the run under way
        self._purged = 0

    def tick(self) -> float:
        if self._before is None:
            self._before = self.retention.cut_off(self.order)
            self._purged = 0
        n = self.retention.batch(self.order, self._before)
        self._purged += n
        if n == BATCH:
            return PAUSE  # more are old enough: the next batch after a pause
        if self._purged:
            log.info("retention: deleted %d %s", self._purged, self.order)
        self._before = None
        return self.interval
