"""Which store --db names, and the URL as logs show it."""

from __future__ import annotations

import pytest

from dts.errors import InvalidArgument
from dts.server.store.url import StoreUrl, parse_store_url, redacted


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("dts.db", StoreUrl("sqlite", "dts.db")),
        ("/var/lib/dts/dts.db", StoreUrl("sqlite", "/var/lib/dts/dts.db")),
        ("sqlite:///var/lib/dts/dts.db", StoreUrl("sqlite", "/var/lib/dts/dts.db")),
        ("postgresql://dts@db/dts", StoreUrl("postgres", "postgresql://dts@db/dts")),
        (
            "postgres://dts@db:5433/dts?sslmode=require",
            StoreUrl("postgres", "postgres://dts@db:5433/dts?sslmode=require"),
        ),
    ],
)
def test_a_db_value_names_its_store(value: str, expected: StoreUrl) -> None:
    assert parse_store_url(value) == expected


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("", "--db must not be empty"),
        ("mysql://u@h/db", "unknown store mysql://"),
        ("sqlite://dts.db", "sqlite:///ABSOLUTE/PATH"),
        ("sqlite:///", "sqlite:///ABSOLUTE/PATH"),
        ("postgresql://u:secret@h:99999/db", "--db postgresql://u:***@h:99999/db"),
        ("postgresql://u@h/db?sslmode", "--db postgresql://u@h/db?sslmode"),
    ],
)
def test_a_bad_db_value_is_refused_without_its_password(value: str, says: str) -> None:
    with pytest.raises(InvalidArgument, match="--db") as e:
        parse_store_url(value)
    assert says in str(e.value)
    assert "secret" not in str(e.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://dts:pw@db/dts", "postgresql://dts:***@db/dts"),
        (
            "postgresql://dts@db/dts?password=pw&sslmode=require",
            "postgresql://dts@db/dts?password=***&sslmode=require",
        ),
        ("postgresql://db/dts", "postgresql://db/dts"),
        ("postgresql://dts:p@ss@db/dts", "postgresql://dts:***@db/dts"),
    ],
)
def test_a_password_never_shows(url: str, shown: str) -> None:
    assert redacted(url) == shown
    assert parse_store_url(url).shown == shown
