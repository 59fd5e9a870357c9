"""The system tests run on each store: every one takes `dts_store` (see tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.postgres import Databases


@pytest.fixture(autouse=True)
def _on_each_store(dts_store: Databases | None) -> Iterator[None]:
    """The PostgreSQL databases a test made for its own servers are dropped when it ends (its
    servers have stopped by then: this fixture is set up first and torn down last of the test's
    own; those of module fixtures were made before it and stay)."""
    made = len(dts_store.made) if dts_store is not None else 0
    yield
    if dts_store is not None:
        dts_store.drop_since(made)
