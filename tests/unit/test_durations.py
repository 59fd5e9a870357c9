"""Durations as users write them (schedules' --every, --retain, purge --older-than)."""

from __future__ import annotations

import pytest

from dts.errors import InvalidArgument
from dts.limits import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1d", 86400),
        ("2w", 14 * 86400),
        ("1h30m", 5400),
        ("1.5h", 5400),
        (" 90 ", 90),
        ("0.5", 0.5),
        ("1D", 86400),
    ],
)
def test_a_duration_reads_as_its_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-5m", "5x", "m", "1h 30m", "5 minutes", "101y"])
def test_what_is_not_a_positive_duration_is_refused_with_the_text(text: str) -> None:
    with pytest.raises(InvalidArgument, match="duration"):
        parse_duration(text)


def test_more_than_a_century_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="100 years"):
        parse_duration("5300w")


@pytest.mark.parametrize(("seconds", "text"), [(5400, "1h30m"), (86400, "1d"), (30, "30s")])
def test_a_duration_is_shown_as_briefly_as_it_reads(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds
