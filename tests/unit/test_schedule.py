"""The schedule rules without I/O: due times (cron in a zone, across DST; every, aligned),
what a tick fires under each catch-up policy, and what a definition may hold."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from dts.domain import JobSpec
from dts.errors import InvalidArgument
from dts.schedule import (
    MAX_CATCHUP,
    ON_TIME,
    Catchup,
    Schedule,
    next_after,
    plan,
    started,
    upcoming,
    validate_schedule,
)

SPEC = JobSpec(argv=("true",))
PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def at(zone: ZoneInfo, *fields: int) -> float:
    return datetime(*fields, tzinfo=zone).timestamp()  # type: ignore[misc]


def local(t: float, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(t, zone).strftime("%m-%d %H:%M%z")


def every(seconds: float, **kw: object) -> Schedule:
    return Schedule("s", SPEC, every=seconds, **kw)  # type: ignore[arg-type]


def cron(expr: str, tz: str = "UTC", **kw: object) -> Schedule:
    return Schedule("s", SPEC, cron=expr, tz=tz, **kw)  # type: ignore[arg-type]


# ---- due times ----------------------------------------------------------------------------


def test_every_is_aligned_to_multiples_of_its_interval_since_the_epoch() -> None:
    s = every(300)
    assert next_after(s, 1000.0) == 1200.0
    assert next_after(s, 1200.0) == 1500.0  # strictly after
    assert upcoming(s, 1199.5, 3) == [1200.0, 1500.0, 1800.0]


def test_cron_times_are_strictly_after_and_in_the_schedules_zone() -> None:
    s = cron("0 9 * * 1-5", "Europe/Paris")
    friday = at(PARIS, 2024, 6, 7, 9, 0)
    assert local(next_after(s, friday), PARIS) == "06-10 09:00+0200"  # Monday, not Friday again
    assert [local(t, PARIS) for t in upcoming(s, friday - 1, 2)] == [
        "06-07 09:00+0200",
        "06-10 09:00+0200",
    ]


def test_spring_forward_a_time_that_does_not_exist_runs_once_at_the_jump() -> None:
    # 2024-03-31 in Paris: 02:00 becomes 03:00, so 02:30 never happens that day
    s = cron("30 2 * * *", "Europe/Paris")
    days = upcoming(s, at(PARIS, 2024, 3, 30, 12, 0), 3)
    assert [local(t, PARIS) for t in days] == [
        "03-31 03:00+0200",
        "04-01 02:30+0200",
        "04-02 02:30+0200",
    ]


def test_fall_back_a_time_that_happens_twice_runs_once() -> None:
    # 2024-10-27 in Paris: 03:00 goes back to 02:00, so 02:30 happens twice; one job
    s = cron("30 2 * * *", "Europe/Paris")
    days = upcoming(s, at(PARIS, 2024, 10, 26, 12, 0), 2)
    assert [local(t, PARIS) for t in days] == ["10-27 02:30+0200", "10-28 02:30+0100"]
    assert days[1] - days[0] == 25 * 3600


def test_new_york_spring_forward_and_fall_back() -> None:
    s = cron("30 2 * * *", "America/New_York")
    spring = upcoming(s, at(NEW_YORK, 2024, 3, 9, 12, 0), 2)
    assert [local(t, NEW_YORK) for t in spring] == ["03-10 03:00-0400", "03-11 02:30-0400"]
    fall = upcoming(s, at(NEW_YORK, 2024, 11, 2, 12, 0), 2)
    # there 02:00 goes back to 01:00: 02:30 happens once, after the change
    assert [local(t, NEW_YORK) for t in fall] == ["11-03 02:30-0500", "11-04 02:30-0500"]


def test_an_every_minute_cron_keeps_the_repeated_hour_of_a_fall_back() -> None:
    s = cron("*/30 * * * *", "Europe/Paris")
    times = upcoming(s, at(PARIS, 2024, 10, 27, 1, 45), 4)
    assert [b - a for a, b in pairwise(times)] == [1800, 1800, 1800]


# ---- a tick: catch-up policies ------------------------------------------------------------


def test_nothing_is_due_before_next_due_nor_while_paused() -> None:
    s = every(60, next_due=600.0)
    assert plan(s, 599.0) is None
    assert plan(replace(s, paused=True), 900.0) is None


def test_an_on_time_tick_fires_its_due_time_under_every_policy() -> None:
    for policy in Catchup:
        p = plan(every(60, next_due=600.0, catchup=policy), 600.4)
        assert p is not None and p.fire == (600.0,) and p.missed == 0 and p.next_due == 660.0


def test_catchup_last_fires_one_job_for_the_latest_missed_time() -> None:
    p = plan(every(60, next_due=600.0, catchup=Catchup.LAST), 6000.0 + 30)
    assert p is not None  # 6000 is on time (30 s old); of the 90 missed before it, the latest
    assert p.fire == (5940.0, 6000.0) and p.missed == 89 and p.next_due == 6060.0


def test_catchup_none_skips_missed_times() -> None:
    p = plan(every(60, next_due=600.0, catchup=Catchup.NONE), 6000.0 + 30)
    # the latest due time is 30 s old: on time, so it fires; the 90 before it are skipped
    assert p is not None and p.fire == (6000.0,) and p.missed == 90
    p = plan(every(3600, next_due=3600.0, catchup=Catchup.NONE), 7200.0 + ON_TIME + 1)
    assert p is not None and p.fire == () and p.missed == 2 and p.next_due == 10800.0


def test_catchup_all_fires_each_missed_time_in_order() -> None:
    p = plan(every(60, next_due=600.0, catchup=Catchup.ALL), 900.0)
    assert p is not None and p.fire == (600.0, 660.0, 720.0, 780.0, 840.0, 900.0)
    assert p.missed == 0 and p.next_due == 960.0


def test_catchup_all_is_bounded_to_the_latest_max_catchup() -> None:
    p = plan(every(1, next_due=1000.0, catchup=Catchup.ALL), 2000.0)
    assert p is not None and len(p.fire) == MAX_CATCHUP
    assert p.fire[-1] == 2000.0 and p.fire[0] == 2000.0 - MAX_CATCHUP + 1
    assert p.missed == 1001 - MAX_CATCHUP


def test_catchup_on_cron_times_across_a_fall_back_night() -> None:
    s = cron("30 * * * *", "Europe/Paris", catchup=Catchup.ALL)
    start = at(PARIS, 2024, 10, 27, 0, 30)
    p = plan(replace(s, next_due=start), at(PARIS, 2024, 10, 27, 4, 0))
    assert p is not None
    # 00:30, 01:30, 02:30 (summer), 02:30 (winter), 03:30: five hours of due times
    assert len(p.fire) == 5 and p.fire[0] == start
    assert local(p.next_due, PARIS) == "10-27 04:30+0100"
    last = plan(replace(s, next_due=start, catchup=Catchup.LAST), at(PARIS, 2024, 10, 27, 4, 0))
    assert last is not None and len(last.fire) == 1 and last.missed == 4


def test_resuming_or_adding_starts_from_the_next_time_after_now() -> None:
    assert started(every(60, next_due=60.0, paused=True), 1000.0).next_due == 1020.0


# ---- definitions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("s", "message"),
    [
        (cron("61 * * * *"), "invalid cron expression"),
        (cron("* * *"), "invalid cron expression"),
        (cron("0 0 30 2 *"), "invalid cron expression"),
        (cron("* * * * *", "Mars/Olympus"), "unknown time zone"),
        (cron("* * * * *", "../etc/passwd"), "unknown time zone"),
        (every(0), "either a cron expression or an interval"),
        (every(0.5), "every must be between"),
        (Schedule("s", SPEC, cron="* * * * *", every=60), "either a cron"),
        (Schedule("bad name", SPEC, every=60), "schedule name"),
        (Schedule("", SPEC, every=60), "schedule name"),
        (Schedule("s", replace(SPEC, delay=5.0), every=60), "delay is not allowed"),
        (Schedule("s", JobSpec(argv=()), every=60), "command must not be empty"),
    ],
)
def test_bad_definitions_are_refused(s: Schedule, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_schedule(s)


def test_good_definitions_pass() -> None:
    validate_schedule(cron("*/5 9-17 * * mon-fri", "America/New_York"))
    validate_schedule(every(1))
    validate_schedule(every(86400))


def test_due_times_from_before_the_ticker_woke_are_missed_however_recent() -> None:
    # the server was down from 1003 to 1008; its ticker started at 1008.2
    s = every(1, next_due=1004.0)
    none = plan(replace(s, catchup=Catchup.NONE), 1009.1, awake_since=1008.2)
    assert none is not None and none.fire == (1009.0,) and none.missed == 5
    last = plan(replace(s, catchup=Catchup.LAST), 1009.1, awake_since=1008.2)
    assert last is not None and last.fire == (1008.0, 1009.0) and last.missed == 4
    each = plan(replace(s, catchup=Catchup.ALL), 1009.1, awake_since=1008.2)
    assert each is not None and each.fire == tuple(float(t) for t in range(1004, 1010))
    assert each.next_due == 1010.0
