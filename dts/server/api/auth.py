"""Who may call what on the server: bearer tokens with roles, checked by an interceptor on
each call's headers, and the server's TLS credentials."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeAlias

import grpc

from dts.channel import HEADER, SCHEME, check_token, read_file
from dts.errors import InvalidArgument

log = logging.getLogger("dts.auth")

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class Role(StrEnum):
    """What a credential may do: submit and read jobs, run them, or both; or only read."""

    CLIENT = "client"
    WORKER = "worker"
    ADMIN = "admin"
    VIEWER = "viewer"  # reads jobs, workers, queues and schedules; acts on nothing


# Which roles may call each service; anything not listed needs no credential (health checks).
SERVICE_ROLES: dict[str, frozenset[Role]] = {
    "/dts.v1.Scheduler/": frozenset({Role.CLIENT, Role.ADMIN}),
    "/dts.v1.Schedules/": frozenset({Role.CLIENT, Role.ADMIN}),
    "/dts.v1.WorkerService/": frozenset({Role.WORKER, Role.ADMIN}),
    "/dts.v1.Admin/": frozenset({Role.ADMIN}),
    "/dts.v1.Queues/": frozenset({Role.CLIENT, Role.ADMIN}),
}

# What a viewer may call: the reads of the services a client may call, by full method name.
VIEWER_METHODS: frozenset[str] = frozenset(
    [
        *(
            f"/dts.v1.Scheduler/{m}"
            for m in (
                "GetJob",
                "WaitJob",
                "ListJobs",
                "GetHistory",
                "GetLogs",
                "FollowLogs",  # live output (a stream), where the server has it
                "ListWorkers",
                "GetStats",
                "GetActivity",
            )
        ),
        "/dts.v1.Queues/ListQueues",
        "/dts.v1.Schedules/ListSchedules",
        "/dts.v1.Schedules/GetSchedule",
    ]
)


def may_call(role: Role, method: str, roles: frozenset[Role]) -> bool:
    """Whether `role` may call `method` of a service open to `roles`."""
    if role is Role.VIEWER:
        return method in VIEWER_METHODS
    return role in roles


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
        if not may_call(cred.role, method, roles):
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
        ca = read_file(self.client_ca, "--tls-client-ca") if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(read_file(self.key, "--tls-key"), read_file(self.cert, "--tls-cert"))],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )
