"""Which queues live workers serve, as the server read it at most a second ago: a submit
learns which of its queues no worker takes jobs from without a read of its own."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from dts.domain import WorkerInfo, WorkerState
from dts.errors import DtsError

log = logging.getLogger("dts.coordinator")

LIVE = (WorkerState.IDLE, WorkerState.BUSY)  # a draining worker takes no new job
MAX_AGE = 1.0  # seconds a reading of the workers is used for


class ServedQueues:
    """The queues live workers serve, read again once the last reading is MAX_AGE old (by
    one caller; the others use the last reading meanwhile). Safe from any thread."""

    def __init__(
        self,
        read: Callable[[], Sequence[WorkerInfo]],
        clock: Callable[[], float] = time.monotonic,
        max_age: float = MAX_AGE,
    ) -> None:
        self._read = read
        self._clock = clock
        self._max_age = max_age
        self._lock = threading.Lock()
        self._served: frozenset[str] | None = None
        self._read_at: float | None = None  # when the workers were last read (or tried)

    def unserved(self, queues: Iterable[str]) -> list[str]:
        """Those of `queues` no live worker serves, sorted; none when the workers could not
        be read (a submit is not the place to fail for it)."""
        served = self._current()
        if served is None:
            return []
        return sorted(set(queues) - served)

    def _current(self) -> frozenset[str] | None:
        if self._fresh():
            return self._served
        if not self._lock.acquire(blocking=self._read_at is None):
            return self._served  # another thread is reading: the last reading will do
        try:
            if not self._fresh():
                self._refresh()
            return self._served
        finally:
            self._lock.release()

    def _fresh(self) -> bool:
        return self._read_at is not None and self._clock() - self._read_at < self._max_age

    def _refresh(self) -> None:
        try:
            workers = self._read()
        except DtsError as e:  # tried again after MAX_AGE, not on every submit
            log.warning("cannot read the workers to tell submits which queues they serve: %s", e)
        else:
            self._served = frozenset(q for w in workers if w.state in LIVE for q in w.queues)
        self._read_at = self._clock()
