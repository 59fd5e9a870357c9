"""The ids of a keyed submit as compact text, and the key's rule."""

from __future__ import annotations

import random

import pytest

from dts.domain import validate_submit_key
from dts.errors import InvalidArgument
from dts.server.store.rows import ids_of, ranges_of


@pytest.mark.parametrize(
    ("ids", "text"),
    [([], ""), ([5], "5"), ([1, 2, 3], "1-3"), ([1, 2, 4, 7, 8], "1-2,4,7-8")],
)
def test_ids_read_back_from_their_runs(ids: list[int], text: str) -> None:
    assert ranges_of(ids) == text
    assert ids_of(text) == ids


def test_any_ascending_ids_round_trip() -> None:
    rng = random.Random(7)
    for _ in range(200):
        ids = sorted(rng.sample(range(1, 500), rng.randint(1, 60)))
        assert ids_of(ranges_of(ids)) == ids
    big = list(range(10**12, 10**12 + 100_000))
    assert len(ranges_of(big)) < 40 and ids_of(ranges_of(big)) == big


@pytest.mark.parametrize("bad", ["x" * 129, "tab\there", "é", "new\nline"])
def test_a_bad_key_is_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_submit_key(bad)


def test_no_key_and_a_uuid_are_fine() -> None:
    validate_submit_key("")
    validate_submit_key("3f2c9a1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b")
