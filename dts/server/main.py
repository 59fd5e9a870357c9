"""dts-server: composes the store, the Redis queue, the coordinator, its background loops and
the gRPC services, and runs them until a signal says stop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import grpc

from dts import __version__, wire
from dts.channel import parse_hostport
from dts.daemon import logs
from dts.daemon.notify import sd_notify
from dts.daemon.process import Readiness, Signals
from dts.daemon.startup import launch
from dts.errors import DtsError, Unavailable
from dts.metrics import MetricsServer
from dts.queue.redis import Keys, RedisQueue, connect, redacted_url
from dts.server import history
from dts.server.api import rpc
from dts.server.api.admin import AdminServicer
from dts.server.api.auth import TokenAuth, load_tokens
from dts.server.api.health import SERVING, Health
from dts.server.api.queues import QueuesServicer
from dts.server.api.rpc import EventLoop, Pools, anonymous
from dts.server.api.schedules import SchedulesServicer
from dts.server.api.servicer import SchedulerServicer, WorkerServicer
from dts.server.config import ServerConfig, load_server_config, read_db_password
from dts.server.coordinator import Coordinator
from dts.server.duties.enqueuer import Enqueuer
from dts.server.duties.lead import Leadership
from dts.server.duties.loop import Loop
from dts.server.duties.promoter import Promoter
from dts.server.duties.reaper import LeaseReaper
from dts.server.duties.reconciler import Reconciler
from dts.server.duties.retainer import Retainer
from dts.server.duties.ticker import Ticker
from dts.server.duties.waitpoll import WaitPoller
from dts.server.metrics import ServerMetrics
from dts.server.retention import Retention
from dts.server.schedules import Schedules
from dts.server.settings import Settings
from dts.server.store import Store
from dts.server.store.sqlite import SqliteStore
from dts.server.store.url import parse_store_url

log = logging.getLogger("dts.server")

PROG = "dts-server"


class Server:
    """A running dts-server. start() brings it up; stop() takes it down in order."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.store = open_store(cfg)
        client = connect(cfg.redis_url)
        self.queue = RedisQueue(client, Keys(cfg.key_prefix))
        self.coordinator = Coordinator(self.store, self.queue, rules_of(cfg))
        self.metrics: MetricsServer | None = None
        if cfg.metrics_listen:
            observer = ServerMetrics(self.store.live_stats, self.store.workers)
            self.coordinator.observer = observer
            rpc.on_failure = observer.failed
            self.metrics = MetricsServer(cfg.metrics_listen, observer.registry)
        lead = Leadership(self.coordinator)  # these run on one server at a time
        self.schedules = Schedules(self.coordinator)
        self.loops: list[Loop] = [
            Enqueuer(self.coordinator),
            Promoter(self.coordinator, lead),
            LeaseReaper(self.coordinator, lead),
            Reconciler(self.coordinator, lead, cfg.reconcile_interval),
            Ticker(self.schedules, lead),
        ]
        if cfg.retain:
            self.loops.append(Retainer(self.coordinator, lead, cfg.retain, cfg.retain_interval))
        if self.store.shared:  # a job waited for here may end through another server
            self.loops.append(WaitPoller(self.coordinator))
        self.auth = TokenAuth(load_tokens(cfg.tokens_file)) if cfg.tokens_file else None
        self.pools = Pools(cfg.grpc_threads)
        self.scheduler = SchedulerServicer(self.coordinator, self.pools)
        self.workers = WorkerServicer(self.coordinator, self.pools, cfg.key_prefix)
        self.admin = AdminServicer(Retention(self.store, self.coordinator.clock), self.pools)
        self.queues = QueuesServicer(self.coordinator, self.pools)
        self.schedule_api = SchedulesServicer(self.schedules, self.pools)
        self.events = EventLoop()
        self.grpc: grpc.aio.Server | None = None
        self.health: Health | None = None
        self.port = 0

    def start(self) -> None:
        # Probe first: gRPC's own bind failure says neither why nor in our log format.
        problem = _bind_error(self.cfg.listen)
        if problem:
            raise Unavailable(f"cannot listen on {self.cfg.listen}: {problem}")
        if self.metrics is not None:  # first: a port it cannot have leaves nothing started
            self.metrics.start()
        self.events.start()
        self.events.call(self._listen())
        self.coordinator.check_redis()
        self.coordinator.reconcile_needed.set()  # Redis may have lost jobs while we were down
        for loop in self.loops:
            loop.start()
        self.events.call(self._serve())
        log.info(
            "dts-server %s listening on %s%s (db %s, redis %s, prefix %r)",
            __version__,
            self.cfg.listen,
            _security_note(self.cfg),
            parse_store_url(self.cfg.db).shown,
            redacted_url(self.cfg.redis_url),
            self.cfg.key_prefix,
        )

    async def _listen(self) -> None:
        """Make the gRPC server and bind its port (on the event loop, which it belongs to)."""
        auth = self.auth
        identify = auth.identify if auth is not None else anonymous
        self.health = Health()
        self.grpc = grpc.aio.server(
            handlers=[
                self.scheduler.handler(),
                self.schedule_api.handler(),
                self.workers.handler(identify),
                self.admin.handler(),
                self.queues.handler(),
                self.health.handler(),
            ],
            interceptors=[auth] if auth is not None else [],
            # no SO_REUSEPORT: a second server on a port in use must fail, not share it
            # no BDP probing: a call's window stays small, so a caller refused on its headers
            # cannot have the server buffer megabytes of the message it keeps sending
            options=[*wire.grpc_options(), ("grpc.so_reuseport", 0), ("grpc.http2.bdp_probe", 0)],
        )
        try:
            if self.cfg.tls is not None:
                self.port = self.grpc.add_secure_port(self.cfg.listen, self.cfg.tls.credentials())
            else:
                self.port = self.grpc.add_insecure_port(self.cfg.listen)
        except RuntimeError as e:
            raise Unavailable(f"cannot listen on {self.cfg.listen}: {e}") from e
        if self.port == 0:
            raise Unavailable(f"cannot listen on {self.cfg.listen} (address in use?)")

    async def _serve(self) -> None:
        assert self.grpc is not None and self.health is not None
        await self.grpc.start()
        self.health.set(SERVING)

    def reload_tokens(self) -> None:
        """SIGHUP: read the tokens file again; on any error keep the tokens in force."""
        if self.auth is None:
            return
        try:
            creds = load_tokens(self.cfg.tokens_file)
        except DtsError as e:
            log.error("reload: tokens not reloaded, the old ones stay in force: %s", e)
            return
        self.auth.replace(creds)
        log.info("reload: %d token(s) in force", len(creds))

    def stop(self, grace: float = 10.0, hurry: Callable[[], bool] = lambda: False) -> None:
        # Shutdown order: say NOT_SERVING and refuse new jobs; stop taking calls and let
        # in-flight ones finish (grpc stop with grace, cut short when `hurry` says so: a
        # second SIGTERM), answering long-polling WaitJob calls at once and ending open
        # SubmitStreams once they have answered what they read; wait for the executors'
        # store work; stop the background loops and the metrics' HTTP server, which use the
        # store; close the store last
        # so every committed transaction is checkpointed cleanly; then the event loop.
        self.coordinator.accepting = False
        if self.grpc is not None:
            self.events.call(self._begin_stop())
            stopped = asyncio.run_coroutine_threadsafe(self.grpc.stop(grace), self.events.loop)
            self.coordinator.wake_waiters()  # long polls would hold the stop for up to 30 s
            deadline = time.monotonic() + grace + 1
            while not _done(stopped, 0.1) and time.monotonic() < deadline:
                if hurry():
                    self.events.call(self.grpc.stop(0))
                    _done(stopped, 1)
                    break
            self.coordinator.wake_waiters()  # one that registered just after the first wake-up
        self.pools.shutdown()
        for loop in self.loops:
            loop.stop()
        if self.metrics is not None:  # its scrapes read the store
            self.metrics.stop()
        self.store.close()
        self.events.close()
        log.info("dts-server stopped")

    async def _begin_stop(self) -> None:
        assert self.health is not None
        self.health.shutdown()
        self.scheduler.end_streams()  # long-lived SubmitStreams would hold the stop too


def open_store(cfg: ServerConfig) -> Store:
    """The store `--db` names: a SQLite file, or a PostgreSQL database (psycopg is loaded only
    for that one)."""
    url = parse_store_url(cfg.db)
    if url.kind == "postgres":
        from dts.server.store.postgres import PostgresStore

        password = read_db_password(cfg.db_password_file) if cfg.db_password_file else ""
        return PostgresStore(url.target, password, max_connections=2 * cfg.grpc_threads + 8)
    return SqliteStore(url.target, cfg.sqlite_synchronous)


def rules_of(cfg: ServerConfig) -> Settings:
    """The coordinator's few settings, out of the server's."""
    return Settings(
        worker_timeout=cfg.worker_timeout,
        default_retries=cfg.default_retries,
        default_backoff=cfg.default_backoff,
        default_timeout=cfg.default_timeout,
        max_backoff=cfg.max_backoff,
        max_lost=cfg.max_lost,
        max_waiters=cfg.max_waiters,
        server=advertised(cfg.listen),
    )


def advertised(listen: str) -> str:
    """How workers' records name this server: the address it listens on, with this machine's
    name for an address of every interface (0.0.0.0, ::)."""
    host, port = parse_hostport(listen, "--listen")
    if host in ("0.0.0.0", "::", ""):
        return f"{socket.gethostname()}:{port}"
    return listen


def _done(future: concurrent.futures.Future[None], timeout: float) -> bool:
    try:
        future.result(timeout)
    except concurrent.futures.TimeoutError:
        return False
    return True


def _bind_error(address: str) -> str:
    """Why listening on `address` fails (e.g. 'Address already in use'), or '' if it would
    not. SO_REUSEADDR as gRPC sets it: a port left in TIME_WAIT by a restart is fine."""
    host, port = parse_hostport(address, "--listen")
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
    except OSError as e:
        return e.strerror or str(e)
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["copy-history"]:
        return history.main(args[1:])
    return launch(
        PROG,
        lambda: load_server_config(args),
        run,
        log=log,
        failure="cannot start: %s",
        errors=(DtsError, OSError),
    )


def run(cfg: ServerConfig, readiness: Readiness, signals: Signals) -> Callable[[], int]:
    """Bring the server up (its errors are a failure to start); returns its main loop."""
    server = Server(cfg)
    server.start()
    return lambda: serve(server, cfg, readiness, signals)


def serve(server: Server, cfg: ServerConfig, readiness: Readiness, signals: Signals) -> int:
    """The started server's main loop: reload on SIGHUP, stop (draining) on a stop signal."""
    readiness.ready()
    sd_notify(f"READY=1\nSTATUS=listening on {cfg.listen}\nMAINPID={os.getpid()}")
    while not signals.stop.is_set():
        signals.wakeup.wait(5.0)
        signals.wakeup.clear()
        if signals.hup.is_set():
            signals.hup.clear()
            cfg = _reload(cfg)
            server.reload_tokens()
        sd_notify("WATCHDOG=1")
    log.info("stopping (signal received); draining in-flight calls")
    sd_notify("STOPPING=1")
    server.stop(grace=0.5 if signals.stops > 1 else 10.0, hurry=lambda: signals.stops > 1)
    return 0


def _security_note(cfg: ServerConfig) -> str:
    tls = "" if cfg.tls is None else " with mutual TLS" if cfg.tls.client_ca else " with TLS"
    return tls + (", tokens required" if cfg.tokens_file else "")


def _reload(cfg: ServerConfig) -> ServerConfig:
    """SIGHUP: reopen log files and apply a changed log level."""
    try:
        fresh = load_server_config(sys.argv[1:])
    except (DtsError, SystemExit) as e:
        log.error("reload: config not reloaded: %s", e)
        return cfg
    return replace(cfg, process=logs.reload(cfg.process, fresh.process))
