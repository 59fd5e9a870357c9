"""The reaper duty: jobs of lost workers run again; ids popped but never claimed put back."""

from __future__ import annotations

from dts.server.duties.loop import Loop


class LeaseReaper(Loop):
    """Recovers jobs of lost workers and ids taken from Redis but never claimed."""

    name = "reaper"

    def tick(self) -> float:
        self.c.reap_leases()
        self.c.recover_inflight()
        return self.c.settings.reap_interval
