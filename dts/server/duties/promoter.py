"""The promoter duty: delayed jobs and retries to their queue when their time comes."""

from __future__ import annotations

import time

from dts.server.duties.loop import Loop


class Promoter(Loop):
    """Moves scheduled jobs (delays, retry backoffs) to the queue when their time comes."""

    name = "promoter"
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
