"""The store contract on every store: each case of tests/unit/test_store.py that needs only a
store (not SQLite's files or internals) runs on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest

from dts.server.store import Store
from tests.unit import test_store as cases

SQLITE_ONLY = {
    "test_attempt_of_a_missing_job_is_refused",  # a raw INSERT through SQLite's connection
}

CONTRACT: list[Callable[[Store], None]] = [
    case
    for name, case in sorted(vars(cases).items())
    if name.startswith("test_")
    and name not in SQLITE_ONLY
    and list(inspect.signature(case).parameters) == ["store"]
]


def test_the_contract_is_most_of_the_store_suite() -> None:
    assert len(CONTRACT) >= 20


@pytest.mark.parametrize("case", CONTRACT, ids=lambda case: case.__name__.removeprefix("test_"))
def test_the_store_keeps_its_contract(store: Store, case: Callable[[Store], None]) -> None:
    case(store)
