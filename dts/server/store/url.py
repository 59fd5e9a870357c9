"""Which store `--db` names: a SQLite file (a path, or sqlite:///PATH) or a PostgreSQL database
(postgresql://...), and that URL as logs may show it (no password)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from dts.errors import InvalidArgument

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True)
class StoreUrl:
    """`kind` is 'sqlite' (target: the file's path) or 'postgres' (target: the libpq URL)."""

    kind: str
    target: str

    @property
    def shown(self) -> str:
        """The target fit for a log line or an error message."""
        return redacted(self.target) if self.kind == "postgres" else self.target


def parse_store_url(value: str) -> StoreUrl:
    """The store `value` names; InvalidArgument (naming --db, never the password) if none."""
    if not value:
        raise InvalidArgument("--db must not be empty")
    if value.startswith(POSTGRES_SCHEMES):
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - parsing the port raises ValueError for a bad one
            if parts.query:
                parse_qsl(parts.query, strict_parsing=True)
        except ValueError as e:
            raise InvalidArgument(f"--db {redacted(value)}: {e}") from None
        return StoreUrl("postgres", value)
    if value.startswith("sqlite://"):
        path = value.removeprefix("sqlite://")
        if not path.startswith("/") or path == "/":
            raise InvalidArgument(f"--db {value}: write sqlite:///ABSOLUTE/PATH, or a plain path")
        return StoreUrl("sqlite", path)
    if "://" in value:
        scheme = value.split("://", 1)[0]
        raise InvalidArgument(
            f"--db: unknown store {scheme}://; give a SQLite path or a postgresql:// URL"
        )
    return StoreUrl("sqlite", value)


def redacted(url: str) -> str:
    """A connection URL with its password (in the authority or a `password=` parameter) as ***."""
    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        user, _, host = authority.rpartition("@")
        if ":" in user:
            user = user.split(":", 1)[0] + ":***"
        authority = f"{user}@{host}"
    return scheme + sep + authority + slash + re.sub(r"([?&]password=)[^&]*", r"\1***", tail)
