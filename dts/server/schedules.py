"""The schedules' rules on the server: adding, changing (apply), pausing, removing and running
schedules, and the tick that fires their due times, each due time one job: the job and the
schedule's next due time are written in one transaction, and a unique index on (schedule,
due time) keeps a second server's tick from making it again. Jobs go to the queue through
the coordinator, after the commit, as a submit's do."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import replace

from dts.domain import Job, JobSpec
from dts.errors import AlreadyExists, InvalidArgument, NotFound, ShuttingDown
from dts.schedule import (
    MAX_CATCHUP,
    Overlap,
    Schedule,
    normal_cron,
    plan,
    started,
    upcoming,
    validate_schedule,
)
from dts.server.coordinator import Coordinator
from dts.server.store import Transaction

log = logging.getLogger("dts.schedules")

MAX_UPCOMING = 100  # next due times one GetSchedule answers
MAX_JOBS = 1000  # latest jobs one GetSchedule answers
MAX_APPLY = 10_000  # schedules in one apply


class Schedules:
    """Owns every change to a schedule. Thread-safe (the store serialises the writes)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator
        self.store = coordinator.store
        self.changed = threading.Event()  # wakes the ticker: a schedule was added or changed

    # ---- definitions --------------------------------------------------------------------

    def add(self, s: Schedule) -> Schedule:
        s = checked(s)
        now = self.c.clock()
        s = started(
            replace(s, paused=False, skips=0, last_skip_at=None, created_at=now, updated_at=now),
            now,
        )
        with self.store.transaction() as tx:
            if not tx.insert_schedule(s):
                raise AlreadyExists(
                    f"schedule {s.name} exists (remove it first, or change it with schedule apply)"
                )
        log.info("schedule %s added: %s, next due %s", s.name, s.when, _iso(s.next_due))
        self.changed.set()
        return s

    def all(self) -> list[Schedule]:
        return self.store.schedules()

    def detail(self, name: str, count: int, jobs: int) -> tuple[Schedule, list[float], list[Job]]:
        """The schedule, its next `count` due times and its latest `jobs` jobs."""
        if not 0 <= count <= MAX_UPCOMING or not 0 <= jobs <= MAX_JOBS:
            raise InvalidArgument(
                f"at most {MAX_UPCOMING} due times and {MAX_JOBS} jobs, got {count} and {jobs}"
            )
        s = self.store.schedule(name)
        if s is None:
            raise NotFound(f"no schedule named {name!r}")
        # a paused schedule has no due times; the others' start at the next one not fired
        times = [] if s.paused else upcoming(s, max(s.next_due, self.c.clock()) - 1e-6, count)
        return s, times, self.store.schedule_jobs(name, jobs)

    def pause(self, name: str) -> Schedule:
        return self._set_paused(name, True)

    def resume(self, name: str) -> Schedule:
        """Due again from the next due time after now: the times it missed while paused are
        not caught up (whatever its catch-up policy)."""
        return self._set_paused(name, False)

    def _set_paused(self, name: str, paused: bool) -> Schedule:
        now = self.c.clock()
        with self.store.transaction() as tx:
            s = _get(tx, name)
            if s.paused == paused:
                return s
            s = replace(s, paused=paused, updated_at=now)
            if not paused:
                s = started(s, now)
            tx.update_schedule(s)
        log.info("schedule %s %s", name, "paused" if paused else "resumed")
        self.changed.set()
        return s

    def remove(self, name: str) -> Schedule:
        with self.store.transaction() as tx:
            s = _get(tx, name)
            tx.delete_schedule(name)
        log.info("schedule %s removed", name)
        return s

    def run(self, name: str) -> Job:
        """One job of the schedule now, outside its due times (no due time of its own)."""
        now = self.c.clock()
        if not self.c.accepting:
            raise ShuttingDown("server is shutting down; not accepting jobs")
        with self.store.transaction() as tx:
            s = _get(tx, name)
            (job,) = tx.insert_schedule_jobs([self._spec(s)], name, [None], now)
        log.info("job %d of schedule %s run by hand", job.id, name)
        self.c.observer.submitted([job])
        self.c.queue_submitted([job])
        return job

    def apply(
        self, wanted: Sequence[Schedule], prune: bool, dry_run: bool
    ) -> list[tuple[str, str]]:
        """Make `wanted` the schedules (and, with `prune`, the only ones); returns (name,
        added/changed/removed/unchanged) by name. A schedule whose timing changed is due from
        the next time after now; its pause and counters stay. Nothing is written on dry_run."""
        if len(wanted) > MAX_APPLY:
            raise InvalidArgument(f"at most {MAX_APPLY} schedules, got {len(wanted)}")
        defs = [checked(s) for s in wanted]
        names = [s.name for s in defs]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise InvalidArgument(f"schedule {twice[0]} is defined twice")
        now = self.c.clock()
        changes: dict[str, str] = {}
        with self.store.transaction() as tx:
            for s in defs:
                changes[s.name] = _apply_one(tx, s, now, dry_run)
            if prune:
                for old in self.store.schedules():
                    if old.name not in changes:
                        changes[old.name] = "removed"
                        if not dry_run:
                            tx.delete_schedule(old.name)
        if not dry_run and any(v != "unchanged" for v in changes.values()):
            log.info(
                "schedules applied: %s",
                ", ".join(f"{n} {v}" for n, v in sorted(changes.items()) if v != "unchanged"),
            )
            self.changed.set()
        return sorted(changes.items())

    # ---- firing ---------------------------------------------------------------------------

    def tick(self, awake_since: float) -> float | None:
        """Fire every schedule that is due (due times before `awake_since`, when the ticker
        last started, were missed: see schedule.plan); returns the next due time of any."""
        now = self.c.clock()
        for s in self.store.schedules():
            if not s.paused and s.next_due <= now:
                self._fire(s.name, now, awake_since)
        return self.store.next_schedule_due()

    def _fire(self, name: str, now: float, awake_since: float) -> None:
        with self.store.transaction() as tx:
            s = tx.get_schedule(name)  # locked: a second server's tick waits, then finds it done
            p = plan(s, now, awake_since) if s is not None else None
            if s is None or p is None:
                return
            fire, skipped = list(p.fire), 0
            if s.overlap is Overlap.SKIP and fire:
                # one job at most, and none while the last one is not final
                last = tx.latest_schedule_job(name)
                keep = [] if last is not None and not last.status.final else fire[-1:]
                skipped, fire = len(fire) - len(keep), keep
            spec = self._spec(s)
            jobs = tx.insert_schedule_jobs([spec] * len(fire), name, fire, now)
            tx.update_schedule(
                replace(
                    s,
                    next_due=p.next_due,
                    skips=s.skips + skipped,
                    last_skip_at=now if skipped else s.last_skip_at,
                )
            )
        self._say(s, fire, jobs, p.missed, skipped)
        self.c.observer.submitted(jobs)
        self.c.queue_submitted(jobs)

    def _say(
        self, s: Schedule, fire: list[float], jobs: list[Job], missed: int, skipped: int
    ) -> None:
        for job in jobs:
            log.info("job %d of schedule %s for %s", job.id, s.name, _iso(job.due_at or 0.0))
        if len(jobs) < len(fire):
            log.info(
                "schedule %s: %d due time(s) had their job already", s.name, len(fire) - len(jobs)
            )
        if missed:
            log.warning(
                "schedule %s missed %d due time(s) (catch-up %s%s)",
                s.name,
                missed,
                s.catchup,
                f": at most the latest {MAX_CATCHUP} are run" if s.catchup == "all" else "",
            )
        if skipped:
            log.warning(
                "schedule %s: %d tick(s) skipped, its last job is not final (overlap skip)",
                s.name,
                skipped,
            )

    def _spec(self, s: Schedule) -> JobSpec:
        st = self.c.settings
        return s.spec.with_defaults(st.default_retries, st.default_backoff, st.default_timeout)


def checked(s: Schedule) -> Schedule:
    """The definition as stored (cron fields single-spaced), or InvalidArgument."""
    s = replace(s, cron=normal_cron(s.cron))
    validate_schedule(s)
    return s


def _get(tx: Transaction, name: str) -> Schedule:
    s = tx.get_schedule(name)
    if s is None:
        raise NotFound(f"no schedule named {name!r}")
    return s


def _apply_one(tx: Transaction, s: Schedule, now: float, dry_run: bool) -> str:
    old = tx.get_schedule(s.name)
    if old is None:
        if not dry_run:
            fresh = replace(s, paused=False, skips=0, last_skip_at=None)
            tx.insert_schedule(started(replace(fresh, created_at=now, updated_at=now), now))
        return "added"
    if old.definition() == s.definition():
        return "unchanged"
    if not dry_run:
        new = replace(
            old,
            spec=s.spec,
            cron=s.cron,
            every=s.every,
            tz=s.tz,
            catchup=s.catchup,
            overlap=s.overlap,
            updated_at=now,
        )
        tx.update_schedule(new if new.timing() == old.timing() else started(new, now))
    return "changed"


def _iso(t: float) -> str:
    if math.isinf(t):
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
