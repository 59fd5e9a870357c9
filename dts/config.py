"""Every option of every dts program, declared once: flag, DTS_* variable, config file, default.

Precedence is flag > environment > config file > default (configargparse). Each program's
options become one frozen, validated config object.
"""

from __future__ import annotations

import argparse
import os
import pwd
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import configargparse
from redis.connection import parse_url as parse_redis_url

from dts.auth import (
    TOKEN_ENV,
    ChannelSecurity,
    ServerTls,
    check_channel,
    is_loopback,
    load_tokens,
    read_token,
)
from dts.domain import (
    MAX_CONCURRENCY,
    MAX_LIMIT,
    MAX_NAME_CHARS,
    MAX_WORKER_QUEUES,
    NO_LIMITS,
    Limits,
    parse_size,
    validate_queue_name,
)
from dts.errors import InvalidArgument
from dts.sandbox import check_pass_env, find_prlimit

ENV_PREFIX = "DTS_"
CONFIG_DIR = "/etc/dts"
DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ArgumentParser(configargparse.ArgumentParser):  # type: ignore[misc]
    """An argument parser whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def new_parser(prog: str, description: str) -> ArgumentParser:
    return ArgumentParser(
        prog=prog,
        description=description,
        default_config_files=[f"{CONFIG_DIR}/{prog.removeprefix('dts-')}.conf"],
        auto_env_var_prefix=ENV_PREFIX,
        args_for_setting_config_path=["-c", "--config"],
        config_arg_help_message="config file (key = value lines; missing default files are fine)",
        formatter_class=configargparse.ArgumentDefaultsHelpFormatter,
    )


# ---- options shared by the daemons ------------------------------------------------------------


def _add_process_options(p: ArgumentParser) -> None:
    p.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="log threshold")
    p.add_argument("--log-format", default="text", choices=("text", "json"), help="log line form")
    p.add_argument("--log-file", default="", help="log to this file instead of stderr")
    p.add_argument("--pidfile", default="", help="write and lock a PID file here")
    p.add_argument("--daemon", action="store_true", help="detach and run in the background")


@dataclass(frozen=True)
class ProcessConfig:
    """How a daemon logs and runs as a process."""

    log_level: str = "info"
    log_format: str = "text"
    log_file: str = ""
    pidfile: str = ""
    daemon: bool = False


def _process_config(ns: Any) -> ProcessConfig:
    if ns.daemon and not ns.log_file:
        raise InvalidArgument("--daemon needs --log-file: a daemon's stderr goes nowhere")
    return ProcessConfig(ns.log_level, ns.log_format, ns.log_file, ns.pidfile, ns.daemon)


# ---- server -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    """Settings of dts-server."""

    listen: str = DEFAULT_SERVER
    redis_url: str = DEFAULT_REDIS_URL
    key_prefix: str = "dts:"
    db: str = "dts.db"
    worker_timeout: float = 30.0
    default_retries: int = 0
    default_backoff: float = 1.0
    max_backoff: float = 3600.0
    default_timeout: float = 0.0
    max_lost: int = 3
    reconcile_interval: float = 60.0
    grpc_threads: int = 8
    max_waiters: int = 10_000
    sqlite_synchronous: str = "full"
    tokens_file: str = ""
    tls: ServerTls | None = None
    plaintext_tokens: bool = False
    process: ProcessConfig = ProcessConfig()


def server_parser(env: Mapping[str, str] | None = None) -> ArgumentParser:
    p = new_parser("dts-server", "The dts coordinator: gRPC API, SQLite history, Redis queue.")
    environ = os.environ if env is None else env
    state_dir = environ.get("STATE_DIRECTORY", "").split(":")[0] or "."
    p.add_argument("--listen", default=DEFAULT_SERVER, help="gRPC address HOST:PORT")
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="Redis that carries the queue")
    p.add_argument("--key-prefix", default="dts:", help="prefix of every Redis key")
    p.add_argument("--db", default=os.path.join(state_dir, "dts.db"), help="SQLite database")
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
    _add_process_options(p)
    return p


def load_server_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> ServerConfig:
    ns = _parse(server_parser(env), argv, env)
    cfg = ServerConfig(
        listen=ns.listen,
        redis_url=ns.redis_url,
        key_prefix=ns.key_prefix,
        db=ns.db,
        worker_timeout=ns.worker_timeout,
        default_retries=ns.default_retries,
        default_backoff=ns.default_backoff,
        max_backoff=ns.max_backoff,
        default_timeout=ns.default_timeout,
        max_lost=ns.max_lost,
        reconcile_interval=ns.reconcile_interval,
        grpc_threads=ns.grpc_threads,
        max_waiters=ns.max_waiters,
        sqlite_synchronous=ns.sqlite_synchronous,
        tokens_file=ns.tokens_file,
        tls=_server_tls(ns),
        plaintext_tokens=ns.plaintext_tokens,
        process=_process_config(ns),
    )
    parse_hostport(cfg.listen, "--listen")
    if cfg.tokens_file:
        load_tokens(cfg.tokens_file)  # refuse a bad file now, with its line
        if cfg.tls is None and not (cfg.plaintext_tokens and is_loopback(cfg.listen)):
            raise InvalidArgument(
                "--tokens-file without TLS would let tokens cross the network in plaintext: "
                "give --tls-cert and --tls-key (or --plaintext-tokens on a loopback --listen)"
            )
    _check_redis_url(cfg.redis_url)
    _positive("--worker-timeout", cfg.worker_timeout)
    _non_negative("--default-retries", cfg.default_retries)
    _non_negative("--default-backoff", cfg.default_backoff)
    _positive("--max-backoff", cfg.max_backoff)
    _non_negative("--default-timeout", cfg.default_timeout)
    _positive("--max-lost", cfg.max_lost)
    _positive("--reconcile-interval", cfg.reconcile_interval)
    _positive("--grpc-threads", cfg.grpc_threads)
    _positive("--max-waiters", cfg.max_waiters)
    if not cfg.db:
        raise InvalidArgument("--db must not be empty")
    return cfg


# ---- worker -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerConfig:
    """Settings of dts-worker."""

    server: str = DEFAULT_SERVER
    redis_url: str = DEFAULT_REDIS_URL
    concurrency: int = 1
    queues: tuple[str, ...] = ("default",)
    name: str = ""
    drain_timeout: float = 60.0
    kill_grace: float = 5.0
    max_output: int = 1 << 20
    cwd: str = ""
    run_as: str = ""
    pass_env: tuple[str, ...] = ()
    max_timeout: float = 0.0
    limits: Limits = NO_LIMITS  # cpu, memory, files, processes (output is max_output)
    security: ChannelSecurity = field(default_factory=ChannelSecurity)
    process: ProcessConfig = ProcessConfig()


def worker_parser() -> ArgumentParser:
    p = new_parser("dts-worker", "A dts worker: takes jobs from Redis and runs them.")
    p.add_argument("--server", default=DEFAULT_SERVER, help="dts-server address HOST:PORT")
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL, help="Redis that carries the queue")
    p.add_argument(
        "--concurrency",
        type=int,
        default=len(os.sched_getaffinity(0)) or 1,
        help="jobs run at once (default: CPUs this process may use)",
    )
    p.add_argument(
        "--queues",
        default="default",
        help="comma-separated queues to take jobs from, first has precedence",
    )
    p.add_argument("--name", default="", help="unique worker name (default: HOST:PID)")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="on SIGTERM, seconds running jobs may take to finish",
    )
    p.add_argument(
        "--kill-grace",
        type=float,
        default=5.0,
        help="seconds between SIGTERM and SIGKILL when a job is stopped",
    )
    p.add_argument(
        "--max-output",
        type=size_arg,
        default=1 << 20,
        help="bytes of stdout and of stderr kept per attempt (K, M, G suffixes; jobs may ask "
        "for less)",
    )
    p.add_argument(
        "--max-timeout",
        type=float,
        default=0.0,
        help="seconds any attempt may run, whatever its own timeout (0: no cap)",
    )
    p.add_argument(
        "--max-cpu",
        type=count_arg,
        default=0,
        help="seconds of CPU time per job process (RLIMIT_CPU; 0: none; jobs may ask for less)",
    )
    p.add_argument(
        "--max-memory",
        type=size_arg,
        default=0,
        help="bytes of address space per job process (RLIMIT_AS, K/M/G; 0: none)",
    )
    p.add_argument(
        "--max-files",
        type=count_arg,
        default=0,
        help="open files per job process (RLIMIT_NOFILE; 0: the worker's own limit)",
    )
    p.add_argument(
        "--max-processes",
        type=count_arg,
        default=0,
        help="processes of the jobs' user (RLIMIT_NPROC, not enforced for root; 0: none)",
    )
    p.add_argument("--cwd", default="", help="working directory of jobs that name none")
    p.add_argument(
        "--run-as",
        default="",
        help="run jobs as this user (name or uid; the worker must run as root)",
    )
    p.add_argument(
        "--pass-env",
        default="",
        help="comma-separated variables (or globs such as AWS_*, or *) of the worker's "
        "environment that jobs get besides PATH, LANG, LANGUAGE, LC_*, TZ and TMPDIR",
    )
    add_channel_options(p)
    _add_process_options(p)
    return p


def load_worker_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> WorkerConfig:
    ns = _parse(worker_parser(), argv, env)
    queues = tuple(q.strip() for q in ns.queues.split(",") if q.strip())
    cfg = WorkerConfig(
        server=ns.server,
        redis_url=ns.redis_url,
        concurrency=ns.concurrency,
        queues=queues,
        name=ns.name or f"{socket.gethostname()}:{os.getpid()}",
        drain_timeout=ns.drain_timeout,
        kill_grace=ns.kill_grace,
        max_output=ns.max_output,
        cwd=ns.cwd,
        run_as=ns.run_as,
        pass_env=tuple(v.strip() for v in ns.pass_env.split(",") if v.strip()),
        max_timeout=ns.max_timeout,
        limits=Limits(
            cpu=ns.max_cpu, memory=ns.max_memory, files=ns.max_files, processes=ns.max_processes
        ),
        security=channel_security(ns, env),
        process=_process_config(ns),
    )
    parse_hostport(cfg.server, "--server")
    check_channel(cfg.server, cfg.security)
    _check_redis_url(cfg.redis_url)
    if not 1 <= cfg.concurrency <= MAX_CONCURRENCY:
        raise InvalidArgument(
            f"--concurrency must be between 1 and {MAX_CONCURRENCY}, got {cfg.concurrency}"
        )
    if not queues:
        raise InvalidArgument("--queues must name at least one queue")
    if len(queues) > MAX_WORKER_QUEUES:
        raise InvalidArgument(f"--queues: at most {MAX_WORKER_QUEUES} queues")
    for queue in queues:
        try:
            validate_queue_name(queue)
        except InvalidArgument as e:
            raise InvalidArgument(f"--queues: {e}") from None
    if len(cfg.name) > MAX_NAME_CHARS:
        raise InvalidArgument(f"--name is longer than {MAX_NAME_CHARS} characters")
    _non_negative("--drain-timeout", cfg.drain_timeout)
    _non_negative("--kill-grace", cfg.kill_grace)
    _positive("--max-output", cfg.max_output)
    _non_negative("--max-timeout", cfg.max_timeout)
    if cfg.max_timeout == float("inf"):
        raise InvalidArgument("--max-timeout must be a number of seconds (0: no cap)")
    if cfg.run_as:
        _check_run_as(cfg.run_as)
    problem = check_pass_env(cfg.pass_env)
    if problem:
        raise InvalidArgument(problem)
    if cfg.limits.rlimits and find_prlimit() is None:
        raise InvalidArgument(
            "--max-cpu, --max-memory, --max-files and --max-processes need prlimit "
            "(util-linux), which is not installed"
        )
    return cfg


# ---- security of the server connection (worker and client) -----------------------------------


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


def _check_run_as(user: str) -> None:
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise InvalidArgument(f"--run-as: no user {user!r} on this machine") from None
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        raise InvalidArgument("--run-as needs the worker to run as root")


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


# ---- helpers ----------------------------------------------------------------------------------


def size_arg(text: str) -> int:
    """An argparse type: bytes, with K, M, G or T (binary) allowed."""
    try:
        value = parse_size(text)
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value > MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"size too large: {text!r}")
    return value


def count_arg(text: str) -> int:
    """An argparse type: a whole number from 0 on."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_LIMIT}, got {value}")
    return value


def _parse(
    parser: ArgumentParser, argv: Sequence[str] | None, env: Mapping[str, str] | None
) -> Any:
    return parser.parse_args(
        args=list(argv) if argv is not None else None,
        env_vars=dict(env) if env is not None else os.environ,
    )


def parse_hostport(value: str, what: str) -> tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:PORT); raises InvalidArgument naming `what`."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise InvalidArgument(f"{what} must be HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _check_redis_url(url: str) -> None:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise InvalidArgument(
            f"--redis-url must start with redis://, rediss:// or unix://: {url!r}"
        )
    try:  # what redis-py would refuse later, with a traceback: a bad port or query value
        parse_redis_url(url)  # type: ignore[no-untyped-call]
    except ValueError as e:
        raise InvalidArgument(f"--redis-url: {e}") from None


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise InvalidArgument(f"{name} must be greater than 0, got {value}")


def _non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise InvalidArgument(f"{name} must not be negative, got {value}")
