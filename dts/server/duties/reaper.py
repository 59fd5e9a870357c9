"""The reaper duty: jobs of lost workers run again; ids popped but never claimed put back;
old submit keys dropped."""

from __future__ import annotations

import time

from dts.server.duties.loop import Loop

FORGET_EVERY = 60.0  # seconds between sweeps of old submit keys


class LeaseReaper(Loop):
    """Recovers jobs of lost workers and ids taken from Redis but never claimed."""

    name = "reaper"
    _forgot = float("-inf")

    def tick(self) -> float:
        self.c.reap_leases()
        self.c.recover_inflight()
        if time.monotonic() - self._forgot >= FORGET_EVERY:
            self.c.forget_submit_keys()
            self._forgot = time.monotonic()
        return self.c.settings.reap_interval
