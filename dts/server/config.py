"""Every option of dts-server, declared once, and the validated ServerConfig they make."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dts.channel import DEFAULT_SERVER, is_loopback, parse_hostport
from dts.daemon.config import ProcessConfig, add_process_options, process_config
from dts.errors import InvalidArgument
from dts.limits import parse_duration
from dts.metrics import add_metrics_option, parse_metrics_listen
from dts.options import ArgumentParser, new_parser, non_negative, parse, positive
from dts.queue.redis import DEFAULT_REDIS_URL, check_redis_url
from dts.server.api.auth import ServerTls, load_tokens
from dts.server.store.url import parse_store_url


@dataclass(frozen=True)
class ServerConfig:
    """Settings of dts-server."""

    listen: str = DEFAULT_SERVER
    redis_url: str = DEFAULT_REDIS_URL
    key_prefix: str = "dts:"
    db: str = "dts.db"  # a SQLite path (or sqlite:///PATH), or a postgresql:// URL
    db_password_file: str = ""
    worker_timeout: float = 30.0
    default_retries: int = 0
    default_backoff: float = 1.0
    max_backoff: float = 3600.0
    default_timeout: float = 0.0
    max_lost: int = 3
    reconcile_interval: float = 60.0
    retain: float = 0.0  # seconds a final job is kept after it finished; 0: for ever
    retain_interval: float = 60.0
    grpc_threads: int = 8
    max_waiters: int = 10_000
    sqlite_synchronous: str = "full"
    tokens_file: str = ""
    tls: ServerTls | None = None
    plaintext_tokens: bool = False
    metrics_listen: str = ""  # HOST:PORT of /metrics; '' for none
    process: ProcessConfig = field(default_factory=ProcessConfig)


EXAMPLES = """\
  dts-server                                  # 127.0.0.1:50051, ./dts.db, redis://127.0.0.1:6379/0
  dts-server --listen 0.0.0.0:50051 --redis-url redis://redis.lan:6379/0 --db /var/lib/dts/dts.db
  dts-server --db postgresql://dts@db.lan/dts --tokens-file /etc/dts/tokens
  dts-server -c /etc/dts/server.conf --daemon --log-file /var/log/dts/server.log
  dts-server copy-history --from dts.db --to postgresql://dts@db.lan/dts"""


def server_parser(env: Mapping[str, str] | None = None) -> ArgumentParser:
    p = new_parser(
        "dts-server",
        "The dts coordinator: gRPC API, history in SQLite or PostgreSQL, Redis queue.\n"
        "dts-server copy-history --from STORE --to STORE copies a history (see its --help).",
        EXAMPLES,
    )
    environ = os.environ if env is None else env
    state_dir = environ.get("STATE_DIRECTORY", "").split(":")[0] or "."
    p.add_argument("--listen", default=DEFAULT_SERVER, help="gRPC address HOST:PORT")
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="Redis that carries the queue")
    p.add_argument("--key-prefix", default="dts:", help="prefix of every Redis key")
    p.add_argument(
        "--db",
        default=os.path.join(state_dir, "dts.db"),
        help="the history: a SQLite file (PATH or sqlite:///PATH) or a PostgreSQL database "
        "(postgresql://USER@HOST/DB?OPTIONS, any libpq option)",
    )
    p.add_argument(
        "--db-password-file",
        default="",
        help="file holding the PostgreSQL password (default: the URL's, $PGPASSWORD or ~/.pgpass)",
    )
    p.add_argument(
        "--worker-timeout",
        type=float,
        default=30.0,
        help="seconds without a heartbeat before a worker's jobs are run elsewhere",
    )
    p.add_argument(
        "--default-retries",
        type=int,
        default=0,
        help="re-runs after a failure for jobs submitted without --retries",
    )
    p.add_argument(
        "--default-backoff",
        type=float,
        default=1.0,
        help="seconds before the first retry for jobs submitted without --backoff",
    )
    p.add_argument("--max-backoff", type=float, default=3600.0, help="cap of a retry's delay")
    p.add_argument(
        "--default-timeout",
        type=float,
        default=0.0,
        help="per-attempt timeout for jobs submitted without --timeout (0: none)",
    )
    p.add_argument(
        "--max-lost",
        type=int,
        default=3,
        help="attempts lost with their worker before a job fails (poison-job guard)",
    )
    p.add_argument(
        "--reconcile-interval",
        type=float,
        default=60.0,
        help="seconds between full checks that Redis holds every queued job",
    )
    p.add_argument(
        "--retain",
        default="",
        metavar="DURATION",
        help="delete final jobs (with their attempts and output) this long after they "
        "finished, e.g. 30d, 12h, 90m (default: keep every job)",
    )
    p.add_argument(
        "--retain-interval",
        type=float,
        default=60.0,
        help="seconds between runs of --retain's deletion (small values are for tests)",
    )
    p.add_argument(
        "--grpc-threads",
        type=int,
        default=8,
        help="threads doing the store work of client calls, and as many for worker calls "
        "(calls that wait hold none)",
    )
    p.add_argument(
        "--max-waiters",
        type=int,
        default=10_000,
        help="calls waiting for a job to end at once (submit --wait); more are told to retry",
    )
    p.add_argument(
        "--sqlite-synchronous",
        default="full",
        choices=("full", "normal"),
        help="full: a submit survives power loss; normal: survives a process crash",
    )
    p.add_argument(
        "--tokens-file",
        default="",
        help="require a token on every call: lines of ROLE TOKEN [WORKER-NAME] "
        "(roles client, worker, admin); re-read on SIGHUP",
    )
    p.add_argument("--tls-cert", default="", help="serve TLS with this certificate (PEM)")
    p.add_argument("--tls-key", default="", help="private key of --tls-cert (PEM)")
    p.add_argument(
        "--tls-client-ca",
        default="",
        help="mutual TLS: callers must present a certificate signed by this CA (PEM)",
    )
    p.add_argument(
        "--plaintext-tokens",
        action="store_true",
        help="accept tokens without TLS (only when listening on a loopback address)",
    )
    add_metrics_option(p)
    add_process_options(p)
    return p


def load_server_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> ServerConfig:
    ns = parse(server_parser(env), argv, env)
    cfg = ServerConfig(
        listen=ns.listen,
        redis_url=ns.redis_url,
        key_prefix=ns.key_prefix,
        db=ns.db,
        db_password_file=ns.db_password_file,
        worker_timeout=ns.worker_timeout,
        default_retries=ns.default_retries,
        default_backoff=ns.default_backoff,
        max_backoff=ns.max_backoff,
        default_timeout=ns.default_timeout,
        max_lost=ns.max_lost,
        reconcile_interval=ns.reconcile_interval,
        retain=_retain(ns.retain),
        retain_interval=ns.retain_interval,
        grpc_threads=ns.grpc_threads,
        max_waiters=ns.max_waiters,
        sqlite_synchronous=ns.sqlite_synchronous,
        tokens_file=ns.tokens_file,
        tls=_server_tls(ns),
        plaintext_tokens=ns.plaintext_tokens,
        metrics_listen=ns.metrics_listen,
        process=process_config(ns),
    )
    parse_hostport(cfg.listen, "--listen")
    if cfg.tokens_file:
        load_tokens(cfg.tokens_file)  # refuse a bad file now, with its line
        if cfg.tls is None and not (cfg.plaintext_tokens and is_loopback(cfg.listen)):
            raise InvalidArgument(
                "--tokens-file without TLS would let tokens cross the network in plaintext: "
                "give --tls-cert and --tls-key (or --plaintext-tokens on a loopback --listen)"
            )
    if cfg.metrics_listen:
        parse_metrics_listen(cfg.metrics_listen)
    check_redis_url(cfg.redis_url)
    positive("--worker-timeout", cfg.worker_timeout)
    non_negative("--default-retries", cfg.default_retries)
    non_negative("--default-backoff", cfg.default_backoff)
    positive("--max-backoff", cfg.max_backoff)
    non_negative("--default-timeout", cfg.default_timeout)
    positive("--max-lost", cfg.max_lost)
    positive("--reconcile-interval", cfg.reconcile_interval)
    positive("--retain-interval", cfg.retain_interval)
    positive("--grpc-threads", cfg.grpc_threads)
    positive("--max-waiters", cfg.max_waiters)
    store = parse_store_url(cfg.db)
    if cfg.db_password_file:
        if store.kind != "postgres":
            raise InvalidArgument("--db-password-file is for a postgresql:// --db")
        read_db_password(cfg.db_password_file)  # refuse an unreadable file now
    return cfg


def read_db_password(path: str) -> str:
    """The password in `path` (its first line); InvalidArgument naming the file otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise InvalidArgument(f"--db-password-file {path}: {why}") from None


def _retain(text: str) -> float:
    """--retain's seconds (0 when not given)."""
    if not text.strip():
        return 0.0
    try:
        return parse_duration(text)
    except InvalidArgument as e:
        raise InvalidArgument(f"--retain: {e}") from None


def _server_tls(ns: Any) -> ServerTls | None:
    if bool(ns.tls_cert) != bool(ns.tls_key):
        raise InvalidArgument("--tls-cert and --tls-key go together")
    if ns.tls_client_ca and not ns.tls_cert:
        raise InvalidArgument("--tls-client-ca needs --tls-cert and --tls-key")
    if not ns.tls_cert:
        return None
    tls = ServerTls(ns.tls_cert, ns.tls_key, ns.tls_client_ca)
    tls.credentials()  # refuse unreadable files now, naming them
    return tls
