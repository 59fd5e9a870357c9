"""How a client or a worker reaches the server: the address it dials by default, TLS and
mutual TLS, the bearer token it presents on every call, and the options that set them."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from dts.errors import InvalidArgument
from dts.failover import FailoverChannel

DEFAULT_SERVER = "127.0.0.1:50051"
HEADER = "authorization"
SCHEME = "Bearer "
MIN_TOKEN_CHARS = 16
TOKEN_ENV = "DTS_TOKEN"


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


def parse_hostport(value: str, what: str) -> tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:PORT); raises InvalidArgument naming `what`."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise InvalidArgument(f"{what} must be HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def server_addresses(value: str) -> list[str]:
    """--server: HOST:PORT, or several separated by commas (the servers of one cluster)."""
    addresses = [a.strip() for a in value.split(",")]
    for address in addresses:
        parse_hostport(address, "--server")
    if len(set(addresses)) != len(addresses):
        raise InvalidArgument(f"--server names an address twice: {value!r}")
    return addresses


def open_channel(
    address: str, sec: ChannelSecurity, options: list[tuple[str, Any]]
) -> grpc.Channel:
    """A channel to `address` (several, comma-separated: a FailoverChannel over them) with TLS
    when configured and the token on every call.

    A token is never sent in plaintext, except to a loopback address when allowed."""
    addresses = server_addresses(address)
    for one in addresses:
        check_channel(one, sec)
    if len(addresses) > 1:
        return FailoverChannel(addresses, lambda one: _open_one(one, sec, options))
    return _open_one(addresses[0], sec, options)


def _open_one(address: str, sec: ChannelSecurity, options: list[tuple[str, Any]]) -> grpc.Channel:
    if sec.tls:
        creds = grpc.ssl_channel_credentials(
            root_certificates=read_file(sec.ca, "--tls-ca"),
            private_key=read_file(sec.key, "--tls-key") if sec.key else None,
            certificate_chain=read_file(sec.cert, "--tls-cert") if sec.cert else None,
        )
        channel = grpc.secure_channel(address, creds, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    if sec.token:
        channel = grpc.intercept_channel(channel, _Bearer(sec.token))
    return channel


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer TOKEN` to every call."""

    def __init__(self, token: str) -> None:
        self._header = (HEADER, SCHEME + token)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return continuation(_with_metadata(details, metadata), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
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


def read_file(path: str, what: str) -> bytes:
    """A credential file's bytes; InvalidArgument naming the option `what` if unreadable."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InvalidArgument(f"{what} {path}: {e.strerror or e}") from None


def add_channel_options(p: Any) -> None:
    p.add_argument(
        "--token-file",
        default="",
        help=f"file holding the token to present (default: ${TOKEN_ENV}, else none)",
    )
    p.add_argument("--tls-ca", default="", help="reach the server over TLS; trust this CA (PEM)")
    p.add_argument("--tls-cert", default="", help="mutual TLS: our certificate (PEM)")
    p.add_argument("--tls-key", default="", help="mutual TLS: private key of --tls-cert (PEM)")
    p.add_argument(
        "--plaintext-token",
        action="store_true",
        help="send the token without TLS (only to a server on a loopback address)",
    )


def channel_security(ns: Any, env: Mapping[str, str] | None = None) -> ChannelSecurity:
    if bool(ns.tls_cert) != bool(ns.tls_key):
        raise InvalidArgument("--tls-cert and --tls-key go together")
    if ns.tls_cert and not ns.tls_ca:
        raise InvalidArgument("--tls-cert needs --tls-ca (mutual TLS is TLS first)")
    return ChannelSecurity(
        ca=ns.tls_ca,
        cert=ns.tls_cert,
        key=ns.tls_key,
        token=read_token(ns.token_file, env),
        plaintext_token=ns.plaintext_token,
    )
