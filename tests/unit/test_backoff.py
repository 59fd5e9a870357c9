"""Unit tests of dts.backoff: capped exponential delays with jitter and the Backoff loop state."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import pytest

from dts.backoff import Backoff, compute_backoff


def const(value: float) -> Callable[[], float]:
    """A stand-in for random.random that always returns `value`."""
    return lambda: value


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (10, 256.0)],
)
def test_doubles_from_base_without_jitter(attempt: int, expected: float) -> None:
    assert compute_backoff(attempt, base=0.5, cap=1e6, jitter=0.0) == expected


def test_middle_of_jitter_range_is_the_raw_delay() -> None:
    assert compute_backoff(3, base=1.0, cap=100.0, jitter=0.25, rand=lambda: 0.5) == 4.0


@pytest.mark.parametrize(("r", "expected"), [(0.0, 3.0), (0.5, 4.0), (1.0, 5.0)])
def test_jitter_spreads_by_the_fraction_either_way(r: float, expected: float) -> None:
    # attempt 3, base 1: raw delay 4; jitter 0.25 gives [3, 5]
    got = compute_backoff(3, base=1.0, cap=100.0, jitter=0.25, rand=lambda: r)
    assert got == pytest.approx(expected)


def test_cap_bounds_the_delay_and_jitter_never_exceeds_it() -> None:
    assert compute_backoff(20, base=1.0, cap=30.0, jitter=0.0) == 30.0
    assert compute_backoff(20, base=1.0, cap=30.0, jitter=0.25, rand=lambda: 1.0) == 30.0
    assert compute_backoff(20, base=1.0, cap=30.0, jitter=0.25, rand=lambda: 0.0) == 22.5


def test_jitter_larger_than_one_never_goes_negative() -> None:
    assert compute_backoff(2, base=1.0, cap=10.0, jitter=3.0, rand=lambda: 0.0) == 0.0


@pytest.mark.parametrize("attempt", [0, -1, -1000])
def test_attempt_below_one_gives_zero(attempt: int) -> None:
    assert compute_backoff(attempt, base=1.0, cap=10.0, jitter=0.25, rand=lambda: 1.0) == 0.0


@pytest.mark.parametrize("base", [0.0, -1.0])
def test_non_positive_base_gives_zero(base: float) -> None:
    assert compute_backoff(3, base=base, cap=10.0) == 0.0


@pytest.mark.parametrize("attempt", [63, 64, 1025, 10**6, 10**18])
def test_huge_attempt_does_not_overflow(attempt: int) -> None:
    for r in (0.0, 0.5, 1.0):
        got = compute_backoff(attempt, base=1.0, cap=3600.0, jitter=0.25, rand=const(r))
        assert math.isfinite(got)
        assert 0.75 * 3600.0 <= got <= 3600.0


def test_huge_base_is_capped() -> None:
    assert compute_backoff(100, base=1e300, cap=5.0, jitter=0.0) == 5.0


def test_delays_stay_within_bounds_for_any_rand() -> None:
    for attempt in range(1, 40):
        raw = min(60.0, 0.1 * 2 ** (attempt - 1))
        for r in (0.0, 0.1, 0.33, 0.5, 0.9, 1.0):
            got = compute_backoff(attempt, base=0.1, cap=60.0, jitter=0.25, rand=const(r))
            assert raw * 0.75 - 1e-12 <= got <= min(60.0, raw * 1.25) + 1e-12


class Sleeps:
    """Records the delays an injected sleep function was asked for."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def test_wait_sleeps_growing_delays_and_reset_starts_over() -> None:
    sleeps = Sleeps()
    b = Backoff(base=0.1, cap=0.5, jitter=0.0, sleep=sleeps)
    for _ in range(5):
        assert b.wait() is True
    assert sleeps.calls == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    assert b.failures == 5
    b.reset()
    assert b.failures == 0
    assert b.wait() is True
    assert sleeps.calls[-1] == pytest.approx(0.1)


def test_wait_uses_the_injected_rand() -> None:
    sleeps = Sleeps()
    b = Backoff(base=1.0, cap=100.0, jitter=0.5, rand=lambda: 0.0, sleep=sleeps)
    b.wait()
    b.wait()
    assert sleeps.calls == pytest.approx([0.5, 1.0])


def test_next_delay_counts_failures() -> None:
    b = Backoff(base=1.0, cap=100.0, jitter=0.0, sleep=Sleeps())
    assert [b.next_delay() for _ in range(3)] == [1.0, 2.0, 4.0]
    assert b.failures == 3


def test_wait_returns_false_at_once_when_stop_is_set() -> None:
    sleeps = Sleeps()
    stop = threading.Event()
    stop.set()
    b = Backoff(base=1000.0, cap=1000.0, jitter=0.0, sleep=sleeps)
    assert b.wait(stop) is False  # would block for 1000 s if it ignored the event
    assert sleeps.calls == []
    assert b.failures == 1


def test_wait_with_unset_stop_returns_true_after_the_delay() -> None:
    b = Backoff(base=0.001, cap=0.001, jitter=0.0, sleep=Sleeps())
    assert b.wait(threading.Event()) is True
