"""dts-worker's process: main(), and the Worker that composes its parts and runs them.

A worker registers with the server, takes job ids from Redis, claims and runs them, and reports
results; it reconnects with backoff to both the server and Redis. Threads: one per slot
(`--concurrency`), each a loop of "take an id from Redis, report the previous result and claim
the id in one Exchange call, run the job" (slots.py); a heartbeat thread renews leases, learns
cancellations and self-fences (heartbeat.py); the main thread waits for signals and drains. A
result stays with its slot until the server has it. session.py talks to the server, feed.py to
Redis; attempts.py keeps the attempts held, ending.py the exit code.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace

from dts import wire
from dts.channel import open_channel
from dts.daemon import logs
from dts.daemon.notify import sd_notify
from dts.daemon.process import Readiness, Signals
from dts.daemon.startup import launch
from dts.domain import Outcome
from dts.errors import DtsError
from dts.metrics import MetricsServer
from dts.queue.redis import connect
from dts.worker.attempts import Attempts
from dts.worker.cgroups import JobCgroups, Unavailable
from dts.worker.config import WorkerConfig, load_worker_config
from dts.worker.ending import Ending
from dts.worker.feed import Feed
from dts.worker.guard import Guard
from dts.worker.heartbeat import Heartbeat
from dts.worker.metrics import WorkerMetrics
from dts.worker.runner import RunOptions, close_inherited_fds
from dts.worker.sandbox import RunAs, default_cwd, find_prlimit, job_environment
from dts.worker.session import Session
from dts.worker.slots import Slots

log = logging.getLogger("dts.worker")

PROG = "dts-worker"


class Worker:
    """One worker process: its session, feed, slot threads, heartbeat, and the main thread's
    signal handling."""

    def __init__(self, cfg: WorkerConfig, signals: Signals) -> None:
        self.cfg = cfg
        self.signals = signals
        # the channel and Redis pool first: their settings' errors are told before --run-as's
        channel = open_channel(cfg.server, cfg.security, wire.grpc_options())
        redis = connect(cfg.redis_url)
        run_as = RunAs.lookup(cfg.run_as) if cfg.run_as else None
        run_opts = RunOptions(
            cfg.max_output,
            cfg.kill_grace,
            default_cwd(cfg.cwd, run_as),
            base_env=job_environment(os.environ, cfg.pass_env, run_as),
            run_as=run_as,
            limits_cap=cfg.limits,
            max_timeout=cfg.max_timeout,
            prlimit=find_prlimit(),
        )
        self.guard = Guard(cfg.kill_grace, capacity=max(1024, 4 * cfg.concurrency))
        self.attempts = Attempts(run_opts, self.guard, cfg.kill_grace)
        self.ending = Ending(signals, self.attempts)
        self.session = Session(cfg, channel, signals, self.ending, registered=self._registered)
        self.feed = Feed(redis, cfg.redis_url, cfg.queues, self.session, signals.stop)
        self.heartbeat = Heartbeat(self.session, self.attempts, self.ending)
        self.slots = Slots(
            cfg.concurrency, self.session, self.feed, self.attempts, self.ending, signals
        )
        self.metrics: MetricsServer | None = None
        if cfg.metrics_listen:
            m = WorkerMetrics(
                cfg.concurrency, self.attempts.count, self.session.link, self.feed.link
            )
            self.attempts.ended = m.ended
            self.metrics = MetricsServer(cfg.metrics_listen, m.registry)

    def run(self, readiness: Readiness) -> int:
        cgroups = self._cgroups()  # first: the guard must start in the worker's new cgroup
        try:
            self.guard.start(cgroups)
            if self.metrics is not None:  # before registering: a worker cut off shows as such
                self.metrics.start()
            if not self.session.register():
                failed = "refused" if self.ending.exit_code else "stopped before registering"
                readiness.failed(failed)
                return self.ending.exit_code
            readiness.ready()
            sd_notify(f"READY=1\nSTATUS=registered as {self.cfg.name}")
            self.heartbeat.start()
            self.slots.start()
            self._wait_for_stop()
            log.info("stopping: no new jobs; %d running", self.attempts.count())
            sd_notify("STOPPING=1")
            self.heartbeat.draining = True
            self.slots.drain(self.cfg.drain_timeout, self.cfg.kill_grace)
            self.heartbeat.stop()
            self.session.unregister()
            log.info("worker %s stopped", self.cfg.name)
            return self.ending.exit_code
        finally:
            self.attempts.stop_all(Outcome.RELEASED, "worker exited")
            if cgroups is not None:
                cgroups.close()  # ends the guard too: it lives in the tree
            self.guard.close()
            self.session.close()
            if self.metrics is not None:
                self.metrics.stop()

    def _registered(self, key_prefix: str) -> None:
        """The server's registration says where its queue is in Redis."""
        self.feed.bind(key_prefix)

    def _cgroups(self) -> JobCgroups | None:
        """A cgroup for each running attempt where this process can make them; else a warning
        and process groups only."""
        try:
            cgroups = JobCgroups.create()
        except Unavailable as e:
            log.warning(
                "jobs run without cgroups of their own (%s): a job's processes that leave its "
                "process group (setsid, daemons) may outlive it",
                e,
            )
            return None
        log.info("jobs run in cgroups of their own under %s", cgroups.tree)
        self.attempts.run_opts = replace(self.attempts.run_opts, cgroups=cgroups)
        return cgroups

    def _wait_for_stop(self) -> None:
        """The main thread while the worker runs: wait for a stop signal, reload on SIGHUP."""
        while not self.signals.stop.is_set():
            self.signals.wakeup.wait(1.0)
            self.signals.wakeup.clear()
            if self.signals.hup.is_set():
                self.signals.hup.clear()
                self._reload()

    def _reload(self) -> None:
        """SIGHUP: reopen log files and apply a changed log level."""
        try:
            fresh = load_worker_config(sys.argv[1:])
        except (DtsError, SystemExit) as e:
            log.error("reload: config not reloaded: %s", e)
            return
        self.cfg = replace(self.cfg, process=logs.reload(self.cfg.process, fresh.process))


def main(argv: Sequence[str] | None = None) -> int:
    return launch(
        PROG,
        lambda: load_worker_config(argv),
        lambda cfg, readiness, signals: Worker(cfg, signals).run(readiness),
        log=log,
        before_logging=close_inherited_fds,  # jobs must not get what the worker inherited
    )
