"""Every option of dts-web, declared once, and the validated WebConfig they make."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dts.channel import (
    DEFAULT_SERVER,
    ChannelSecurity,
    parse_hostport,
    read_token,
    server_addresses,
)
from dts.errors import InvalidArgument
from dts.options import ArgumentParser, new_parser, parse, positive

DEFAULT_LISTEN = "127.0.0.1:8080"
EXAMPLES = """\
  dts-web                                      # http://127.0.0.1:8080, server 127.0.0.1:50051
  dts-web --server a:50051,b:50051 --tls-ca ca.pem
  dts-web --listen 0.0.0.0:8443 --tls-cert web.pem --tls-key web.key"""


@dataclass(frozen=True)
class WebConfig:
    """Settings of dts-web: where it serves, and how it reaches the servers."""

    listen: str = DEFAULT_LISTEN
    server: str = DEFAULT_SERVER
    security: ChannelSecurity = field(default_factory=ChannelSecurity)  # a token: no login
    rpc_timeout: float = 10.0
    tls_cert: str = ""  # serve HTTPS with this certificate and key
    tls_key: str = ""
    session_idle: float = 8 * 3600.0  # a session unused this long is forgotten
    log_level: str = "info"

    @property
    def https(self) -> bool:
        return bool(self.tls_cert)


def web_parser() -> ArgumentParser:
    p = new_parser(
        "dts-web", "The dts web dashboard: jobs, workers, queues and schedules.", EXAMPLES
    )
    # DTS_LISTEN, DTS_TLS_CERT and DTS_TLS_KEY are dts-server's (and the last two
    # dts-client's): where the programs share an environment (supervisord), these are apart
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        env_var="DTS_WEB_LISTEN",
        help=f"HTTP(S) address HOST:PORT (default {DEFAULT_LISTEN}: this machine only)",
    )
    p.add_argument(
        "--server",
        default=DEFAULT_SERVER,
        help="dts-server address HOST:PORT, or the addresses of several, comma-separated",
    )
    p.add_argument(
        "--rpc-timeout", type=float, default=10.0, help="seconds to wait for a server's reply"
    )
    p.add_argument(
        "--token-file",
        default="",
        help="a token for every visitor (no login page); without it, when the server "
        "requires tokens, each visitor logs in with their own",
    )
    p.add_argument("--tls-ca", default="", help="reach the servers over TLS; trust this CA (PEM)")
    p.add_argument(
        "--tls-client-cert", default="", help="mutual TLS to the servers: our certificate"
    )
    p.add_argument(
        "--tls-client-key", default="", help="mutual TLS: private key of --tls-client-cert"
    )
    p.add_argument(
        "--plaintext-token",
        action="store_true",
        help="send tokens without TLS (only to servers on a loopback address)",
    )
    p.add_argument(
        "--tls-cert", default="", env_var="DTS_WEB_TLS_CERT", help="serve HTTPS: our certificate"
    )
    p.add_argument(
        "--tls-key", default="", env_var="DTS_WEB_TLS_KEY", help="serve HTTPS: key of --tls-cert"
    )
    p.add_argument(
        "--session-idle",
        type=float,
        default=8 * 3600.0,
        help="seconds a login lasts without use",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="least important log lines written (to stderr)",
    )
    return p


def web_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> WebConfig:
    """The validated settings; InvalidArgument for a bad value (the caller says it in one
    line and exits 2)."""
    ns = parse(web_parser(), argv, env)
    parse_hostport(ns.listen, "--listen")
    server_addresses(ns.server)
    positive("--rpc-timeout", ns.rpc_timeout)
    positive("--session-idle", ns.session_idle)
    if bool(ns.tls_cert) != bool(ns.tls_key):
        raise InvalidArgument("--tls-cert and --tls-key go together")
    if bool(ns.tls_client_cert) != bool(ns.tls_client_key):
        raise InvalidArgument("--tls-client-cert and --tls-client-key go together")
    if ns.tls_client_cert and not ns.tls_ca:
        raise InvalidArgument("--tls-client-cert needs --tls-ca (mutual TLS is TLS first)")
    security = ChannelSecurity(
        ca=ns.tls_ca,
        cert=ns.tls_client_cert,
        key=ns.tls_client_key,
        token=read_token(ns.token_file, env),
        plaintext_token=ns.plaintext_token,
    )
    return WebConfig(
        listen=ns.listen,
        server=ns.server,
        security=security,
        rpc_timeout=ns.rpc_timeout,
        tls_cert=ns.tls_cert,
        tls_key=ns.tls_key,
        session_idle=ns.session_idle,
        log_level=ns.log_level,
    )
