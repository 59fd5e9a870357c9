"""How many jobs a worker slot claims at once: a fixed amount of work, not a fixed count."""

from __future__ import annotations

from dts.worker import PREFETCH_MAX, PREFETCH_WORK, prefetch_count


def test_short_jobs_are_claimed_many_at_a_time_up_to_the_cap() -> None:
    assert prefetch_count(0.001) == min(PREFETCH_MAX, int(PREFETCH_WORK / 0.001))
    assert prefetch_count(0.001) > 1
    assert prefetch_count(0.0) == PREFETCH_MAX
    assert prefetch_count(1e-6) == PREFETCH_MAX


def test_a_slot_never_claims_more_than_its_work_window_ahead() -> None:
    for average in (0.002, 0.005, 0.01, 0.02):
        n = prefetch_count(average)
        assert n >= 1
        assert n == 1 or n * average <= PREFETCH_WORK + 1e-9


def test_jobs_longer_than_the_window_are_claimed_one_at_a_time() -> None:
    assert prefetch_count(PREFETCH_WORK * 2) == 1
    assert prefetch_count(10.0) == 1
