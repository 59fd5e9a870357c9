"""Visitors' sessions: a random id in an HttpOnly cookie names a session kept here, in memory,
with its CSRF token and, after a login, the visitor's token and the client that presents it.
The token never leaves this process (not in a cookie, not in a log)."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from dts.client.api import Client

COOKIE = "dts_session"
MAX_SESSIONS = 10_000  # the oldest are forgotten first: a flood of visitors cannot fill memory


class Access(StrEnum):
    """What a session may do on the servers."""

    NONE = "none"  # must log in first
    READ = "read"  # a viewer token: no action buttons
    ACT = "act"  # cancel, retry, pause, ...


@dataclass
class Session:
    """One visitor: `client` is None until they log in (or always, when nobody logs in and
    the dashboard's shared client serves everyone)."""

    id: str
    csrf: str
    access: Access = Access.NONE
    client: Client | None = None
    used: float = 0.0
    flash: list[str] = field(default_factory=list)

    def csrf_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.csrf.encode())

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


class Sessions:
    """The sessions of this process, by id; thread-safe. A session unused for `idle` seconds
    is gone (its client closed)."""

    def __init__(self, idle: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle = idle
        self.clock = clock
        self._by_id: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_id: str) -> Session | None:
        now = self.clock()
        with self._lock:
            self._expire(now)
            found = self._by_id.get(session_id)
            if found is not None:
                found.used = now
                self._by_id.move_to_end(session_id)
            return found

    def new(self, access: Access = Access.NONE, client: Client | None = None) -> Session:
        session = Session(
            secrets.token_urlsafe(32), secrets.token_urlsafe(32), access, client, self.clock()
        )
        with self._lock:
            self._by_id[session.id] = session
            while len(self._by_id) > MAX_SESSIONS:
                self._by_id.popitem(last=False)[1].close()
        return session

    def drop(self, session_id: str) -> None:
        with self._lock:
            gone = self._by_id.pop(session_id, None)
        if gone is not None:
            gone.close()

    def close(self) -> None:
        with self._lock:
            gone = list(self._by_id.values())
            self._by_id.clear()
        for session in gone:
            session.close()

    def _expire(self, now: float) -> None:
        while self._by_id:
            oldest = next(iter(self._by_id.values()))
            if now - oldest.used < self.idle:
                return
            self._by_id.popitem(last=False)
            oldest.close()
