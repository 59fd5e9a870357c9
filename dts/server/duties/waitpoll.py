"""The wait poller: with servers sharing a database, a job waited for here may end through
another server; its waiters are woken when a look at the store finds it final."""

from __future__ import annotations

from dts.server.duties.loop import Loop

POLL_EVERY = 0.2  # seconds between looks while calls wait here


class WaitPoller(Loop):
    """Wakes the waiters of jobs that ended through another server."""

    name = "wait-poller"

    def tick(self) -> float:
        self.c.wake_finished()
        return POLL_EVERY
