"""How the worker stops on its own: its exit code, a thread dying of a bug, being turned away."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dts.daemon.process import Signals
from dts.domain import Outcome
from dts.worker.attempts import Attempts

log = logging.getLogger("dts.worker")

# A thread of ours died of a bug (sysexits.h EX_SOFTWARE): the worker exits with this, and its
# service manager starts a fresh one, rather than heartbeating on with fewer hands than it shows
EXIT_SOFTWARE = 70


class Ending:
    """The worker's exit code, and the stop it asks of its main thread when it cannot go on."""

    def __init__(self, signals: Signals, attempts: Attempts) -> None:
        self.signals = signals
        self.attempts = attempts
        self.exit_code = 0
        self.crashed = False  # a slot or the heartbeat died of a bug

    def guarded(self, body: Callable[[], None], what: str, stop_jobs: bool) -> None:
        """Run a thread's `body`; a bug that ends it stops the worker (exit EXIT_SOFTWARE),
        and its running jobs too if `stop_jobs`."""
        try:
            body()
        except BaseException:  # the top of a thread: nobody else would see it
            log.critical(
                "%s thread %s died of an unexpected error; stopping the worker (exit %d)",
                what,
                threading.current_thread().name,
                EXIT_SOFTWARE,
                exc_info=True,
            )
            self.crashed = True
            if not self.exit_code:
                self.exit_code = EXIT_SOFTWARE
            if stop_jobs:
                self.attempts.stop_all(Outcome.RELEASED, f"worker stopping: its {what} failed")
            self._stop()

    def dismissed(self, reason: str) -> None:
        """The server will not have this worker (refused, superseded): stop its jobs at once,
        and the worker, with exit 1."""
        self.exit_code = 1
        self.attempts.stop_all(Outcome.RELEASED, reason, at_once=True)
        self._stop()

    def _stop(self) -> None:
        self.signals.stop.set()
        self.signals.wakeup.set()
