"""The lead among servers sharing a PostgreSQL database: a session advisory lock on a
connection of its own, which goes with its server (a crash ends the session at once; a server
cut off loses it when PostgreSQL's keepalives give up on it)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from dts.errors import first_line

log = logging.getLogger("dts.store")

LEAD_LOCK = 0x64747302  # pg_try_advisory_lock key held by the server that runs the duties
CHECK_EVERY = 1.0  # seconds between looks at the lock's connection (and tries to take it)
# The lock's session is dropped this soon after its server went silent (PostgreSQL's side),
# and the server drops it this soon after PostgreSQL did (libpq's side): another takes over
# within seconds of a server's host dying or being cut off.
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 2, "keepalives_interval": 1}
KEEPALIVE_COUNT = 3
USER_TIMEOUT_MS = 5000
SERVER_SIDE = (
    "SET tcp_keepalives_idle = 2",
    "SET tcp_keepalives_interval = 1",
    f"SET tcp_keepalives_count = {KEEPALIVE_COUNT}",
    f"SET tcp_user_timeout = {USER_TIMEOUT_MS}",
)


class Lead:
    """Whether this server holds the lead. `held()` is cheap: it looks at the connection at
    most once a second, takes the lock when it is free, and says False once it cannot tell."""

    def __init__(
        self, url: str, extra: dict[str, Any], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._url = url
        self._extra = {
            **KEEPALIVE,
            "keepalives_count": KEEPALIVE_COUNT,
            "tcp_user_timeout": USER_TIMEOUT_MS,
            **extra,
            "autocommit": True,
        }
        self._clock = clock
        self._mutex = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._held = False
        self._looked = float("-inf")
        self._failing = False  # the last look failed (said once, until one succeeds)

    def held(self) -> bool:
        with self._mutex:
            now = self._clock()
            if now - self._looked >= CHECK_EVERY:
                self._looked = now
                self._look()
            return self._held

    def _look(self) -> None:
        try:
            if self._conn is None:
                self._conn = psycopg.connect(self._url, **self._extra)
                for statement in SERVER_SIDE:
                    self._conn.execute(statement)
            if self._held:
                self._conn.execute("SELECT 1")  # the session lives, and its lock with it
            else:
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LEAD_LOCK,))
                self._held = bool(row.fetchone()[0])  # type: ignore[index]
            self._failing = False
        except psycopg.Error as e:
            if not self._failing:  # while no server holds the lead, no server reaps
                log.warning("cannot look at the lead among servers: %s; retrying", first_line(e))
                self._failing = True
            self._drop()

    def _drop(self) -> None:
        self._held = False
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._mutex:
            self._drop()
