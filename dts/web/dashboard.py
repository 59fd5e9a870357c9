"""What the dashboard knows across requests: its settings, the sessions, the client shared by
every visitor when nobody logs in, and who a request acts as (its client and its access)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from starlette.requests import Request

from dts.channel import ChannelSecurity
from dts.client.api import Client
from dts.errors import InvalidArgument, PermissionDenied, Unauthenticated
from dts.web.config import WebConfig
from dts.web.sessions import COOKIE, Access, Session, Sessions

ClientFactory = Callable[[str, float, ChannelSecurity], Client]


class NeedLogin(Exception):
    """Raised when a page needs a login the session has not made (or that no longer holds)."""


@dataclass(frozen=True)
class Visit:
    """Who a request acts as: its session (new: its cookie is to be set), client and access."""

    session: Session
    new: bool
    client: Client
    access: Access

    @property
    def can_act(self) -> bool:
        return self.access is Access.ACT


def access_of(client: Client) -> Access:
    """What the client's credential may do: it must read (Unauthenticated / PermissionDenied
    otherwise); it may act when the server, asked to cancel job 0, objects to the id (the
    request was let through) rather than to the caller."""
    try:
        client.stats()
    except PermissionDenied:
        raise PermissionDenied("this token may not read jobs (a worker's token?)") from None
    try:
        client.cancel(0)
    except PermissionDenied:
        return Access.READ
    except InvalidArgument:
        return Access.ACT
    return Access.ACT  # pragma: no cover - job 0 never exists


def default_client(address: str, timeout: float, security: ChannelSecurity) -> Client:
    return Client(address, timeout=timeout, security=security)


class Dashboard:
    """The state of one dts-web process."""

    def __init__(self, cfg: WebConfig, new_client: ClientFactory = default_client) -> None:
        self.cfg = cfg
        self.new_client = new_client
        self.sessions = Sessions(cfg.session_idle)
        self.shared = new_client(cfg.server, cfg.rpc_timeout, cfg.security)
        self._lock = threading.Lock()
        self._login: bool | None = False if cfg.security.token else None
        self._shared_access: Access | None = None

    def close(self) -> None:
        self.sessions.close()
        self.shared.close()

    def login_required(self) -> bool:
        """Whether visitors log in: the servers require tokens and --token-file gave none.
        Learnt from the first answer (an unreachable server raises, and is asked again)."""
        if self._login is None:
            try:
                self.shared.stats()
                required = False
            except Unauthenticated:
                required = True
            with self._lock:
                self._login = required
        return self._login

    def relearn_login(self) -> None:
        """The servers' answer says tokens changed: ask again whether visitors log in (unless
        --token-file serves everyone)."""
        if not self.cfg.security.token:
            with self._lock:
                self._login = None

    def login_required_known(self) -> bool:
        """Whether visitors log in, as far as known already (no call to a server)."""
        return bool(self._login)

    def shared_access(self) -> Access:
        if self._shared_access is None:
            found = access_of(self.shared) if self.cfg.security.token else Access.ACT
            with self._lock:
                self._shared_access = found
        return self._shared_access

    def session(self, request: Request) -> tuple[Session, bool]:
        """The request's session, or a new one (True: its cookie is to be set)."""
        found = self.sessions.get(request.cookies.get(COOKIE, ""))
        if found is not None:
            return found, False
        return self.sessions.new(), True

    def visit(self, request: Request) -> Visit:
        """Who the request acts as; NeedLogin when the visitor must log in first (no session
        is made for them then: only the login page makes one)."""
        if not self.login_required():
            session, new = self.session(request)
            return Visit(session, new, self.shared, self.shared_access())
        found = self.sessions.get(request.cookies.get(COOKIE, ""))
        if found is None or found.client is None:
            raise NeedLogin()
        return Visit(found, False, found.client, found.access)

    def log_in(self, old: Session, token: str) -> Session:
        """A new session (a new id: the old one may be known to others) acting with `token`;
        Unauthenticated / PermissionDenied / InvalidArgument when the token will not do."""
        token = token.strip()
        if not token:
            raise InvalidArgument("give a token")
        security = replace(self.cfg.security, token=token)
        client = self.new_client(self.cfg.server, self.cfg.rpc_timeout, security)
        try:
            access = access_of(client)
        except BaseException:
            client.close()
            raise
        self.sessions.drop(old.id)
        return self.sessions.new(access, client)

    def forget_login(self, session: Session) -> None:
        """The server no longer takes the session's token: it must log in again."""
        session.close()
        session.access = Access.NONE
