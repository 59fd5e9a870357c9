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
# Of each kind, logged in or not, the least recently used are forgotten first beyond this: a
# flood of visitors fills no memory, and visitors without a token (anyone) can only push out
# one another's sessions, never a login's.
MAX_SESSIONS = 10_000


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
    """The sessions of this process, by id, logins apart from the others; thread-safe. A
    session unused for `idle` seconds is gone (its client closed)."""

    def __init__(
        self, idle: float, clock: Callable[[], float] = time.monotonic, most: int = MAX_SESSIONS
    ) -> None:
        self.idle = idle
        self.clock = clock
        self.most = most
        # least recently used first
        self._logins: OrderedDict[str, Session] = OrderedDict()
        self._others: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_id: str) -> Session | None:
        now = self.clock()
        with self._lock:
            for kind in (self._logins, self._others):
                _expire(kind, now, self.idle)
                found = kind.get(session_id)
                if found is not None:
                    found.used = now
                    kind.move_to_end(session_id)
                    return found
        return None

    def new(self, access: Access = Access.NONE, client: Client | None = None) -> Session:
        """A new session: a login's when it has a client of its own."""
        session = Session(
            secrets.token_urlsafe(32), secrets.token_urlsafe(32), access, client, self.clock()
        )
        kind = self._logins if client is not None else self._others
        with self._lock:
            kind[session.id] = session
            while len(kind) > self.most:
                kind.popitem(last=False)[1].close()
        return session

    def drop(self, session_id: str) -> None:
        with self._lock:
            gone = self._logins.pop(session_id, None) or self._others.pop(session_id, None)
        if gone is not None:
            gone.close()

    def close(self) -> None:
        with self._lock:
            gone = [*self._logins.values(), *self._others.values()]
            self._logins.clear()
            self._others.clear()
        for session in gone:
            session.close()


def _expire(kind: OrderedDict[str, Session], now: float, idle: float) -> None:
    while kind:
        oldest = next(iter(kind.values()))
        if now - oldest.used < idle:
            return
        kind.popitem(last=False)
        oldest.close()
