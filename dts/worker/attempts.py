"""The attempts a worker holds: claimed or running, and finished but not yet reported."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from dts.domain import Assignment, AttemptKey, Outcome, Result
from dts.v1 import dts_pb2 as pb
from dts.worker.guard import Guard
from dts.worker.runner import Execution, RunOptions

log = logging.getLogger("dts.worker")


class Attempts:
    """Every attempt this worker holds, under one lock: the slots hold and run them, the
    heartbeat renews their leases (and cancels them), a stop stops them. An attempt is held
    from its claim until the server has its result."""

    def __init__(self, run_opts: RunOptions, guard: Guard, kill_grace: float) -> None:
        self.run_opts = run_opts  # what attempts run with (the worker adds its cgroups)
        self._guard = guard
        self._kill_grace = kill_grace
        self._lock = threading.Lock()
        # keyed by (job id, attempt): a stale attempt of a job may still be dying here when
        # the server hands us its next attempt
        self._running: dict[AttemptKey, Execution] = {}
        self._held: Counter[int] = Counter()  # job id -> its attempts in _running
        self._unreported: dict[AttemptKey, Result] = {}
        self.ended: Callable[[Outcome], None] = _ignore  # each attempt's end (the metrics)

    def hold(self, a: Assignment) -> Execution:
        """A claimed attempt, known to the heartbeat (renewed, cancellable) before it starts."""
        exe = Execution(a, self.run_opts, self._guard.add, self._guard.remove)
        with self._lock:
            self._running[(a.job_id, a.attempt)] = exe
            self._held[a.job_id] += 1
        return exe

    def execute(self, exe: Execution) -> Result:
        """Run a held attempt in this (slot's) thread; its result is kept until reported."""
        a = exe.assignment
        key = (a.job_id, a.attempt)
        with self._lock:
            stale = (
                [e for k, e in self._running.items() if k[0] == a.job_id and e is not exe]
                if self._held[a.job_id] > 1
                else []
            )
        for old in stale:  # an older attempt of this job is still here: it is not ours now
            old.stop(Outcome.RELEASED, "superseded by a newer attempt", at_once=True)
        deadline = time.monotonic() + self._kill_grace + 5
        while stale and time.monotonic() < deadline:  # never two attempts of one job at once
            with self._lock:
                stale = [e for e in stale if e in self._running.values()]
            time.sleep(0.01)
        verbose = log.isEnabledFor(logging.INFO)
        if verbose:
            log.info("job %d attempt %d started: %s", a.job_id, a.attempt, a.spec.display[:200])
        try:
            result = exe.run()
        except Exception as e:  # a bug in the runner must not lose the job: report a failure
            log.exception("job %d: runner failed", a.job_id)
            result = Result(a.job_id, a.attempt, Outcome.FAILED, None, f"worker error: {e}")
        if verbose:
            log.info(
                "job %d attempt %d %s%s",
                a.job_id,
                a.attempt,
                result.outcome,
                f" (exit {result.exit_code})" if result.exit_code else "",
            )
        self.ended(result.outcome)
        with self._lock:
            self._unreported[key] = result
            if self._running.pop(key, None) is not None:
                self._held[a.job_id] -= 1
                if not self._held[a.job_id]:
                    del self._held[a.job_id]
        return result

    def stop_all(self, outcome: Outcome, reason: str, at_once: bool = False) -> None:
        for exe in self.running():
            exe.stop(outcome, reason, at_once)

    def running(self) -> list[Execution]:
        """The attempts held and not finished: claimed, or running."""
        with self._lock:
            return list(self._running.values())

    def count(self) -> int:
        """How many attempts are held and not finished (read without the lock)."""
        return len(self._running)

    def get(self, job_id: int, attempt: int) -> Execution | None:
        with self._lock:
            return self._running.get((job_id, attempt))

    def leases(self) -> list[pb.Lease]:
        """Every attempt held, for the heartbeat to renew: claimed, running or unreported."""
        with self._lock:
            held = [*self._running, *self._unreported]
        return [pb.Lease(job_id=j, attempt=n) for j, n in held]

    def unreported(self) -> list[Result]:
        with self._lock:
            return list(self._unreported.values())

    def forget(self, batch: list[Result]) -> None:
        """The server has these results: they are no longer ours to keep."""
        with self._lock:
            for r in batch:
                if self._unreported.get((r.job_id, r.attempt)) is r:
                    del self._unreported[(r.job_id, r.attempt)]


def _ignore(outcome: Outcome) -> None:
    pass
