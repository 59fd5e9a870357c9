"""What counts as a job id in Redis (exactly what dts writes), and the warnings about the rest."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dts.queue import ID_BITS, is_job_id
from dts.queue.redis import DropLog, parse_id


@given(st.integers(min_value=1, max_value=2**ID_BITS - 1))
def test_every_id_dts_writes_reads_back(job_id: int) -> None:
    assert parse_id(str(job_id).encode()) == job_id
    assert parse_id(str(job_id)) == job_id
    assert is_job_id(job_id)


@given(st.one_of(st.binary(max_size=16), st.text(max_size=8).map(str.encode)))
def test_a_member_is_an_id_only_in_the_form_dts_writes(member: bytes) -> None:
    try:
        value = int(member.decode("ascii"))
        canonical = 0 < value < 2**ID_BITS and str(value).encode() == member
    except (UnicodeDecodeError, ValueError):
        canonical = False
    if canonical:
        assert str(parse_id(member)).encode() == member
    else:
        with pytest.raises(ValueError):
            parse_id(member)


@pytest.mark.parametrize(
    ("member", "cause"),
    [
        (b"", "empty"),
        (b"abc", "not a decimal number"),
        (b"1e5", "not a decimal number"),
        (b"-1", "not a decimal number"),
        (b" 5", "not a decimal number"),
        ("\u0663".encode(), "not a decimal number"),  # int() reads this Arabic-Indic 3
        ("\u0663", "not a decimal number"),
        (b"0", "zero or a leading zero"),
        (b"007", "zero or a leading zero"),
        (str(2**ID_BITS).encode(), f"not below 2**{ID_BITS}"),
        (b"99999999999999999999999", f"not below 2**{ID_BITS}"),
        (b"9" * 100_000, f"not below 2**{ID_BITS}"),  # beyond what int() converts
    ],
)
def test_what_is_not_an_id_says_why(member: bytes | str, cause: str) -> None:
    with pytest.raises(ValueError, match=cause.replace("*", r"\*")):
        parse_id(member)


@pytest.mark.parametrize("value", [0, -1, 2**ID_BITS, 2**63 - 1, 2**64, -(2**63)])
def test_numbers_out_of_range_are_no_ids(value: int) -> None:
    assert not is_job_id(value)


def test_dropped_members_are_logged_once_per_cause_then_once_a_minute_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    drops = DropLog(repeat=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="dts.queue"):
        for i in range(500):  # a writer that keeps adding junk, two causes
            drops.note(b"x%d" % i, "dts:queue:q", "not a decimal number")
            drops.note(b"", "dts:queue:q", "empty")
            now[0] += 0.1  # 50 seconds in all
        assert len(caplog.records) == 2
        assert "b'x0' from dts:queue:q: not a job id (not a decimal number)" in caplog.text
        now[0] += 11.0  # a minute after the first warning
        drops.note(b"y", "dts:queue:q", "not a decimal number")
        drops.note(b"y", "dts:inflight", "not a decimal number")  # another place
    assert len(caplog.records) == 4
    assert "499 more like it since the last warning" in caplog.records[2].getMessage()
    assert "more like it" not in caplog.records[3].getMessage()
