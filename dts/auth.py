"""Who may call what: bearer tokens with roles, checked by a server interceptor, and the
channel and port credentials (TLS, mutual TLS) of clients, workers and the server."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeAlias

import grpc

from dts.errors import InvalidArgument

log = logging.getLogger("dts.auth")

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

HEADER = "authorization"
SCHEME = "Bearer "
MIN_TOKEN_CHARS = 16
TOKEN_ENV = "DTS_TOKEN"


class Role(StrEnum):
    """What a credential may do: submit and read jobs, run them, or both."""

    CLIENT = "client"
    WORKER = "worker"
    ADMIN = "admin"


# Which roles may call each service; anything not listed needs no credential (health checks).
SERVICE_ROLES: dict[str, frozenset[Role]] = {
    "/dts.v1.Scheduler/": frozenset({Role.CLIENT, Role.ADMIN}),
    "/dts.v1.WorkerService/": frozenset({Role.WORKER, Role.ADMIN}),
}


@dataclass(frozen=True)
class Credential:
    """One accepted token: its role and, for a worker, the one worker name it may use."""

    role: Role
    token: str
    name: str = ""

    @property
    def id(self) -> str:
        """A non-secret name of the token, kept with a worker's registration: the worker name
        a bound token belongs to (every token bound to it is that worker), else the first 16
        hex digits of the token's SHA-256."""
        if self.name:
            return f"bound:{self.name}"
        return "sha256:" + hashlib.sha256(self.token.encode()).hexdigest()[:16]


def load_tokens(path: str) -> list[Credential]:
    """Read a tokens file: one `ROLE TOKEN [WORKER-NAME]` per line, `#` starts a comment.

    Raises InvalidArgument naming the file and line for anything malformed."""
    try:
        text = Path(path).read_text()
        mode = os.stat(path).st_mode
    except OSError as e:
        raise InvalidArgument(f"--tokens-file {path}: {e.strerror or e}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("tokens file %s can be read by other users (chmod 600 it)", path)
    creds: list[Credential] = []
    unbound: list[int] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        where = f"--tokens-file {path} line {number}"
        if len(fields) not in (2, 3):
            raise InvalidArgument(f"{where}: expected ROLE TOKEN [WORKER-NAME]")
        try:
            role = Role(fields[0])
        except ValueError:
            roles = ", ".join(r.value for r in Role)
            raise InvalidArgument(f"{where}: role must be one of {roles}") from None
        token = fields[1]
        check_token(token, where)
        if len(fields) == 3 and role is not Role.WORKER:
            raise InvalidArgument(f"{where}: only a worker token is bound to a worker name")
        creds.append(Credential(role, token, fields[2] if len(fields) == 3 else ""))
        if role is Role.WORKER and len(fields) == 2:
            unbound.append(number)
    if not creds:
        raise InvalidArgument(f"--tokens-file {path}: no tokens in it")
    if len({c.token for c in creds}) != len(creds):
        raise InvalidArgument(f"--tokens-file {path}: a token appears twice")
    for number in unbound:
        log.warning(
            "tokens file %s: worker token on line %d is not bound to a worker name; any holder "
            "can register as any worker",
            path,
            number,
        )
    return creds


def check_token(token: str, where: str) -> None:
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable():
        raise InvalidArgument(
            f"{where}: a token must be at least {MIN_TOKEN_CHARS} printable ASCII characters"
        )


def read_token(token_file: str, env: Mapping[str, str] | None = None) -> str:
    """The token a client or worker presents: from --token-file, else $DTS_TOKEN, else none."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise InvalidArgument(f"--token-file {token_file}: {e.strerror or e}") from None
        where = f"--token-file {token_file}"
    else:
        token = (os.environ if env is None else env).get(TOKEN_ENV, "").strip()
        where = f"${TOKEN_ENV}"
    if token:
        check_token(token, where)
    return token


def is_loopback(address: str) -> bool:
    """Whether HOST:PORT names this machine's loopback interface."""
    host = address.rpartition(":")[0].strip("[]") or address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---- server side ------------------------------------------------------------------------------


class TokenAuth(grpc.aio.ServerInterceptor):
    """Refuses calls without a known token (UNAUTHENTICATED) or with a token whose role may
    not call the method (PERMISSION_DENIED), on their headers: the request of a refused call
    is never read, so a caller without a token cannot make the server wait for a message
    or hold one. (A worker token bound to a name is checked against the request's worker
    name by the worker service, which has read it.)"""

    def __init__(self, creds: Sequence[Credential]) -> None:
        self._creds = [(c, c.token.encode()) for c in creds]

    def replace(self, creds: Sequence[Credential]) -> None:
        """Put a new set of tokens in force (one assignment: calls see the old or the new)."""
        self._creds = [(c, c.token.encode()) for c in creds]

    def lookup(self, presented: str) -> Credential | None:
        """The credential of a token, comparing in constant time against every one."""
        given = presented.encode()
        found = None
        for cred, token in self._creds:  # no early exit: timing says nothing of which
            if hmac.compare_digest(given, token):
                found = cred
        return found

    def identify(self, metadata: Iterable[tuple[str, str | bytes]]) -> Credential | None:
        """The credential a call's metadata presents, or None."""
        header = dict(metadata).get(HEADER, "")
        if not isinstance(header, str) or not header.startswith(SCHEME):
            return None
        return self.lookup(header[len(SCHEME) :].strip())

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method: str = details.method
        roles = next((r for prefix, r in SERVICE_ROLES.items() if method.startswith(prefix)), None)
        if roles is None:
            return await continuation(details)
        header = dict(details.invocation_metadata or ()).get(HEADER, "")
        if not isinstance(header, str) or not header.startswith(SCHEME):
            return _refuse(grpc.StatusCode.UNAUTHENTICATED, "a token is required (--token-file)")
        cred = self.lookup(header[len(SCHEME) :].strip())
        if cred is None:
            return _refuse(grpc.StatusCode.UNAUTHENTICATED, "unknown token")
        if cred.role not in roles:
            call = method.rsplit("/", 1)[-1]
            return _refuse(
                grpc.StatusCode.PERMISSION_DENIED, f"a {cred.role} token may not call {call}"
            )
        return await continuation(details)


def _refuse(code: grpc.StatusCode, message: str) -> Handler:
    """A handler that refuses at once without reading the request: shaped as a streaming
    one, whatever the method, because the server reads a unary request before it calls
    the handler."""

    async def refuse(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    return grpc.stream_stream_rpc_method_handler(refuse)


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate and key, and (for mutual TLS) the CA clients must present."""

    cert: str
    key: str
    client_ca: str = ""

    def credentials(self) -> grpc.ServerCredentials:
        ca = _read(self.client_ca, "--tls-client-ca") if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(_read(self.key, "--tls-key"), _read(self.cert, "--tls-cert"))],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )


# ---- client side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelSecurity:
    """How a client or worker reaches the server: TLS trust and identity, and its token."""

    ca: str = ""  # CA that signed the server's certificate: TLS when set
    cert: str = ""  # our certificate and key, for servers that require mutual TLS
    key: str = ""
    token: str = ""
    plaintext_token: bool = False  # the operator allows a token without TLS to loopback

    @property
    def tls(self) -> bool:
        return bool(self.ca)


def check_channel(address: str, sec: ChannelSecurity) -> None:
    """Refuse settings that would send a token in plaintext off this machine."""
    if sec.token and not sec.tls and not (sec.plaintext_token and is_loopback(address)):
        raise InvalidArgument(
            f"refusing to send a token without TLS to {address} "
            "(give --tls-ca, or --plaintext-token for a server on this machine)"
        )


def open_channel(
    address: str, sec: ChannelSecurity, options: list[tuple[str, Any]]
) -> grpc.Channel:
    """A channel to `address` with TLS when configured and the token on every call.

    A token is never sent in plaintext, except to a loopback address when allowed."""
    check_channel(address, sec)
    if sec.tls:
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(sec.ca, "--tls-ca"),
            private_key=_read(sec.key, "--tls-key") if sec.key else None,
            certificate_chain=_read(sec.cert, "--tls-cert") if sec.cert else None,
        )
        channel = grpc.secure_channel(address, creds, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    if sec.token:
        channel = grpc.intercept_channel(channel, _Bearer(sec.token))
    return channel


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer TOKEN` to every call."""

    def __init__(self, token: str) -> None:
        self._header = (HEADER, SCHEME + token)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return continuation(_with_metadata(details, metadata), request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return continuation(_with_metadata(details, metadata), requests)


class _Details(grpc.ClientCallDetails):
    def __init__(self, base: Any, metadata: list[tuple[str, str]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = tuple(metadata)
        self.credentials = base.credentials
        self.wait_for_ready = base.wait_for_ready
        self.compression = getattr(base, "compression", None)


def _with_metadata(details: Any, metadata: list[tuple[str, str]]) -> _Details:
    return _Details(details, metadata)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InvalidArgument(f"{what} {path}: {e.strerror or e}") from None
