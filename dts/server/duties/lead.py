"""Which server runs the duties that must run on one server at a time (the reaper, the
promoter, the reconciler, the schedules' ticker): the one holding the store's lead; taking
it over is logged and gives the running jobs a full lease, as a start does."""

from __future__ import annotations

import logging
import threading

from dts.server.coordinator import Coordinator

log = logging.getLogger("dts.background")


class Leadership:
    """Asked by each of those duties before its tick. Thread-safe."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator
        self._mutex = threading.Lock()
        self._leading = False

    def held(self) -> bool:
        with self._mutex:
            now = self.c.store.lead()
            if now and not self._leading:
                # While nobody led, nobody reaped: a lease that ran out then is no sign of a
                # lost worker; and Redis may have lost ids nobody put back.
                self.c.grace_leases()
                self.c.reconcile_needed.set()
                if self.c.store.shared:
                    log.info(
                        "this server now leads: it runs the reaper, promoter, reconciler,"
                        " schedules' ticker and retention"
                    )
            elif self._leading and not now:
                log.warning("this server no longer holds the lead; another one runs the duties")
            self._leading = now
            return now
