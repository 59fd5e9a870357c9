"""The ticker duty: fires the schedules' due times, on the lead server only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dts.server.duties.loop import Loop
from dts.server.schedules import Schedules

if TYPE_CHECKING:
    from dts.server.duties.lead import Leadership

# Seconds the ticker sleeps at most: it wakes at the next due time, or at once when a schedule
# is added or changed on this server; a change made through another server is seen this late.
MAX_SLEEP = 5.0
# A pause longer than this between two ticks (this server did not lead, or the store was away)
# starts the ticker anew: due times from before then count as missed (catch-up policy).
ASLEEP = 3 * MAX_SLEEP


class Ticker(Loop):
    """Sleeps until the next due time of any schedule, then fires what is due."""

    name = "ticker"

    def __init__(self, schedules: Schedules, lead: Leadership | None = None) -> None:
        super().__init__(schedules.c, lead)
        self.schedules = schedules
        self._awake_since = 0.0
        self._ticked = -float("inf")

    def wake(self) -> None:
        self.schedules.changed.set()

    def sleep(self, delay: float) -> None:
        self.schedules.changed.wait(delay)
        self.schedules.changed.clear()

    def tick(self) -> float:
        now = self.c.clock()
        if now - self._ticked > ASLEEP:
            self._awake_since = now
        self._ticked = now
        nxt = self.schedules.tick(self._awake_since)
        if nxt is None:
            return MAX_SLEEP
        return max(0.0, min(MAX_SLEEP, nxt - self.c.clock()))
