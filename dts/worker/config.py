"""Every option of dts-worker, declared once, and the validated WorkerConfig they make."""

from __future__ import annotations

import os
import pwd
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from dts.channel import (
    DEFAULT_SERVER,
    ChannelSecurity,
    add_channel_options,
    channel_security,
    check_channel,
    server_addresses,
)
from dts.daemon.config import ProcessConfig, add_process_options, process_config
from dts.domain import MAX_CONCURRENCY, MAX_NAME_CHARS, MAX_WORKER_QUEUES, validate_queue_name
from dts.errors import InvalidArgument
from dts.limits import NO_LIMITS, RLIMIT_LIMITS, Limits
from dts.metrics import add_metrics_option, parse_metrics_listen
from dts.options import (
    ArgumentParser,
    limit_arg,
    new_parser,
    non_negative,
    parse,
    positive,
    size_arg,
)
from dts.queue.redis import DEFAULT_REDIS_URL, check_redis_url
from dts.worker.sandbox import check_pass_env, find_prlimit


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
    metrics_listen: str = ""  # HOST:PORT of /metrics; '' for none
    process: ProcessConfig = field(default_factory=ProcessConfig)


EXAMPLES = """\
  dts-worker                                  # server 127.0.0.1:50051, queue default, a slot a CPU
  dts-worker --server h1:50051,h2:50051 --redis-url redis://redis.lan:6379/0
  dts-worker --queues gpu,default --concurrency 2 --name gpu-1
  dts-worker --max-memory 4G --max-timeout 3600 --run-as nobody
  dts-worker -c /etc/dts/worker.conf --daemon --log-file /var/log/dts/worker.log"""


def worker_parser() -> ArgumentParser:
    p = new_parser("dts-worker", "A dts worker: takes jobs from Redis and runs them.", EXAMPLES)
    p.add_argument(
        "--server",
        default=DEFAULT_SERVER,
        help="dts-server address HOST:PORT, or the addresses of several, comma-separated",
    )
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
    for limit in RLIMIT_LIMITS:  # the output's cap is --max-output, above
        p.add_argument(limit.flag, type=limit_arg(limit.unit), default=0, help=limit.worker_help)
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
    add_metrics_option(p)
    add_process_options(p)
    return p


def load_worker_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> WorkerConfig:
    ns = parse(worker_parser(), argv, env)
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
        limits=Limits(**{limit.name: getattr(ns, limit.dest) for limit in RLIMIT_LIMITS}),
        security=channel_security(ns, env),
        metrics_listen=ns.metrics_listen,
        process=process_config(ns),
    )
    for address in server_addresses(cfg.server):
        check_channel(address, cfg.security)
    check_redis_url(cfg.redis_url)
    if cfg.metrics_listen:
        parse_metrics_listen(cfg.metrics_listen)
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
    non_negative("--drain-timeout", cfg.drain_timeout)
    non_negative("--kill-grace", cfg.kill_grace)
    positive("--max-output", cfg.max_output)
    non_negative("--max-timeout", cfg.max_timeout)
    if cfg.max_timeout == float("inf"):
        raise InvalidArgument("--max-timeout must be a number of seconds (0: no cap)")
    if cfg.run_as:
        _check_run_as(cfg.run_as)
    problem = check_pass_env(cfg.pass_env)
    if problem:
        raise InvalidArgument(problem)
    if cfg.limits.rlimits and find_prlimit() is None:
        raise InvalidArgument(f"{_RLIMIT_FLAGS} need prlimit (util-linux), which is not installed")
    return cfg


def _in_words(items: Sequence[str]) -> str:
    """'a, b and c'."""
    return " and ".join([", ".join(items[:-1]), items[-1]] if len(items) > 1 else items)


_RLIMIT_FLAGS: Final = _in_words([limit.flag for limit in RLIMIT_LIMITS])


def _check_run_as(user: str) -> None:
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise InvalidArgument(f"--run-as: no user {user!r} on this machine") from None
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        raise InvalidArgument("--run-as needs the worker to run as root")
