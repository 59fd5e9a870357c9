"""The state of a connection the worker retries (to the server, to Redis), logged once a change."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("dts.worker")


class Link:
    """Logs a connection's state changes once each, not once per retry."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.up: bool | None = None
        self.recovered = threading.Event()  # set while up: cuts retry waits short

    def ok(self) -> None:
        if self.up is not True:
            log.info("%s %s", self.what, "connected" if self.up is None else "available again")
        self.up = True
        self.recovered.set()

    def down(self, err: object) -> None:
        if self.up is not False:
            log.warning("%s unavailable: %s (retrying with backoff)", self.what, err)
        self.up = False
        self.recovered.clear()
