"""Schedules, as data and rules: a recurring job's definition, when it fires next (cron through
cronsim, or every N seconds), and what a tick at `now` fires (the catch-up rule). No I/O."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from dts.domain import MAX_SECONDS, JobSpec, validate_spec
from dts.errors import InvalidArgument
from dts.limits import format_duration

MAX_CATCHUP: Final = 100  # jobs one tick of a schedule makes at most (catch-up all)
# A due time is on time (not missed) while it is the latest one and at most this old: a tick
# that comes a little late still fires it under every catch-up policy.
ON_TIME: Final = 60.0
MAX_COUNTED: Final = 10_000  # missed cron times counted (for the log) at most
NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
MAX_NAME: Final = 64
_SPACES: Final = re.compile(r"\s+")


class Catchup(StrEnum):
    """What a tick does with due times it missed (the server was down)."""

    NONE = "none"  # skip them
    LAST = "last"  # one job, for the latest of them
    ALL = "all"  # a job for each (the latest MAX_CATCHUP)


class Overlap(StrEnum):
    """Whether a job may start while the schedule's previous one is not final."""

    ALLOW = "allow"
    SKIP = "skip"  # no: the tick is skipped and counted


@dataclass(frozen=True)
class Schedule:
    """A named recurring job: its definition (name .. overlap) and its state."""

    name: str
    spec: JobSpec  # what each job runs (delay 0; unset retries etc. take the server's defaults)
    cron: str = ""  # a cron expression (5 fields), or '' with `every`
    every: float = 0.0  # seconds between due times, aligned to the epoch, or 0 with `cron`
    tz: str = "UTC"  # the zone the cron expression is read in
    catchup: Catchup = Catchup.LAST
    overlap: Overlap = Overlap.ALLOW
    paused: bool = False
    next_due: float = 0.0  # the earliest due time not fired yet
    skips: int = 0  # ticks skipped for overlap
    last_skip_at: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    def definition(self) -> tuple[object, ...]:
        """What the user defines (apply compares these), without the state."""
        return (self.spec, self.cron, self.every, self.tz, self.catchup, self.overlap)

    def timing(self) -> tuple[object, ...]:
        """What decides the due times."""
        return (self.cron, self.every, self.tz)

    @property
    def when(self) -> str:
        """How the due times are written: the cron expression (and zone), or 'every 5m'."""
        if self.cron:
            return self.cron if self.tz == "UTC" else f"{self.cron} ({self.tz})"
        return f"every {format_duration(self.every)}"


@dataclass(frozen=True)
class Plan:
    """What one tick of a schedule does: the due times to fire (ascending), how many due times
    it passes over without a job, and the next due time after them."""

    fire: tuple[float, ...]
    missed: int
    next_due: float


def zone(name: str) -> ZoneInfo:
    """The time zone called `name`, or InvalidArgument."""
    try:
        if not name or name != name.strip() or ".." in name or name.startswith("/"):
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidArgument(f"unknown time zone {name!r}") from None


def validate_schedule(s: Schedule) -> None:
    """Raise InvalidArgument naming the first thing wrong with the definition of `s`."""
    if not s.name or len(s.name) > MAX_NAME or not set(s.name) <= NAME_CHARS:
        raise InvalidArgument(
            f"schedule name must be 1-{MAX_NAME} characters of letters, digits, '_', '.', '-':"
            f" {s.name!r}"
        )
    if bool(s.cron) == bool(s.every):
        raise InvalidArgument("a schedule takes either a cron expression or an interval (every)")
    if s.every and not 1 <= s.every <= MAX_SECONDS:  # also NaN
        raise InvalidArgument(f"every must be between 1s and {MAX_SECONDS:.0f}s, got {s.every:g}")
    tz = zone(s.tz)
    if s.cron:
        try:
            first = next(CronSim(s.cron, datetime(2000, 1, 1, tzinfo=tz)), None)
        except (CronSimError, ValueError) as e:
            raise InvalidArgument(f"invalid cron expression {s.cron!r}: {e}") from None
        if first is None:
            raise InvalidArgument(f"cron expression {s.cron!r} never fires")
    if s.spec.delay:
        raise InvalidArgument("a schedule's jobs start at their due time: delay is not allowed")
    validate_spec(s.spec)


def normal_cron(expr: str) -> str:
    """The expression with its fields separated by one space."""
    return _SPACES.sub(" ", expr.strip())


def _cron_times(s: Schedule, start: float, reverse: bool = False) -> Iterator[float]:
    """The cron due times after `start` (before it with `reverse`), as epoch seconds."""
    at = datetime.fromtimestamp(start, zone(s.tz))
    try:
        for dt in CronSim(s.cron, at, reverse=reverse):
            yield dt.timestamp()
    except (CronSimError, ValueError):  # ran past the years cronsim knows
        return


def next_after(s: Schedule, t: float) -> float:
    """The first due time strictly after `t` (inf for a cron expression that fires no more)."""
    if s.every:
        return (math.floor(t / s.every) + 1) * s.every
    return next(_cron_times(s, t), math.inf)


def upcoming(s: Schedule, now: float, count: int) -> list[float]:
    """The next `count` due times after `now`."""
    times: list[float] = []
    t = now
    while len(times) < count:
        t = next_after(s, t)
        if math.isinf(t):
            break
        times.append(t)
    return times


def latest(s: Schedule, now: float, since: float, limit: int) -> tuple[list[float], int]:
    """The due times in [since, now], at most the `limit` latest (ascending), and how many
    there are in all (for cron, counted up to MAX_COUNTED)."""
    if s.every:
        if since > now:
            return [], 0
        first = math.ceil(since / s.every)
        last = math.floor(now / s.every)
        total = max(0, last - first + 1)
        return [k * s.every for k in range(max(first, last - limit + 1), last + 1)], total
    # cronsim's reverse: strictly before a whole second; so start from the next one
    found: list[float] = []
    total = 0
    for t in _cron_times(s, math.floor(now) + 1, reverse=True):
        if t < since or total == MAX_COUNTED:
            break
        total += 1
        if len(found) < limit:
            found.append(t)
    return found[::-1], total


def plan(s: Schedule, now: float, awake_since: float = -math.inf) -> Plan | None:
    """What a tick at `now` fires for `s` (None: nothing is due yet, or it is paused).

    Of the due times from s.next_due to now, those that came while the ticker ran (since
    `awake_since`, when it last started ticking) and are at most ON_TIME old are on time:
    they fire whatever the policy. The others were missed (no server ticked then): `none`
    skips them, `last` fires the latest of them, `all` fires each; at most MAX_CATCHUP jobs
    in all (the latest; the older are skipped and counted)."""
    if s.paused or s.next_due > now:
        return None
    times, total = latest(s, now, s.next_due, MAX_CATCHUP + 1)
    nxt = next_after(s, now)
    cut = max(awake_since, now - ON_TIME)
    on_time = [t for t in times if t >= cut]
    missed = times[: len(times) - len(on_time)]
    if s.catchup is Catchup.LAST:
        fire = missed[-1:] + on_time
    elif s.catchup is Catchup.ALL:
        fire = missed + on_time
    else:
        fire = on_time
    fire = fire[-MAX_CATCHUP:]
    return Plan(tuple(fire), total - len(fire), nxt)


def started(s: Schedule, now: float) -> Schedule:
    """`s` as added (or resumed, or given new timing) at `now`: due from the next time after
    now, so nothing before is caught up."""
    return replace(s, next_due=next_after(s, now))
