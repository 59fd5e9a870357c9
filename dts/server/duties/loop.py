"""The base of every duty: a daemon thread that ticks until stopped and survives a bad tick."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from dts.errors import Unavailable
from dts.server.coordinator import Coordinator

if TYPE_CHECKING:
    from dts.server.duties.lead import Leadership

log = logging.getLogger("dts.background")

FOLLOW = 1.0  # seconds between looks at the lead, for a duty that waits for it


class Loop:
    """A daemon thread that calls `tick()` until stopped; `tick()` returns seconds to sleep.
    Given a `lead`, it ticks only while this server holds it (a duty run once among servers)."""

    name = "loop"

    def __init__(self, coordinator: Coordinator, lead: Leadership | None = None) -> None:
        self.c = coordinator
        self.lead = lead
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dts-{self.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.wake()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wake(self) -> None:
        """Cut the current sleep short (subclasses wait on more than the stop event)."""

    def _run(self) -> None:
        away = False  # the store is unavailable: said once, until it is back
        while not self._stop.is_set():
            try:
                delay = self.tick() if self.lead is None or self.lead.held() else FOLLOW
                if away:
                    log.info("%s: the store is available again", self.name)
                    away = False
            except Unavailable as e:  # the database is down or restarting: not a bug
                self.c.observer.failed(e)
                if not away:
                    log.error("%s: %s; retrying", self.name, e)
                    away = True
                delay = 1.0
            except Exception as e:  # a loop must survive a bad tick (a bug): log it, go on
                self.c.observer.failed(e)
                log.exception("%s failed; retrying", self.name)
                delay = 1.0
            self.sleep(delay)

    def sleep(self, delay: float) -> None:
        self._stop.wait(delay)

    def tick(self) -> float:
        raise NotImplementedError
