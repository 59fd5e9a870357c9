"""dts-worker: registers with the server, takes job ids from Redis, claims and runs them, and
reports results; reconnects with backoff to both the server and Redis.

Threads: the main loop fetches and claims; one thread per running job; a heartbeat thread
renews leases and learns cancellations; a reporter thread delivers results in batches and
keeps them while the server is away.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

import grpc
import redis

from dts import __version__, logs, wire
from dts.backoff import Backoff
from dts.config import WorkerConfig, load_worker_config
from dts.domain import Assignment, Outcome, Result
from dts.errors import DtsError
from dts.guard import Guard
from dts.notify import sd_notify
from dts.process import PidFile, Readiness, Signals, daemonize, fail
from dts.queue import Keys, RedisQueue
from dts.runner import Execution, RunOptions
from dts.v1 import dts_pb2 as pb
from dts.v1 import dts_pb2_grpc as pb_grpc

log = logging.getLogger("dts.worker")

PROG = "dts-worker"
RPC_TIMEOUT = 10.0
REPORT_BATCH = 256
FENCE_FRACTION = 0.8  # of the lease: kill our jobs when no renewal got through for this long
RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)

T = TypeVar("T")
Key = tuple[int, int]  # (job id, attempt)


class Link:
    """Logs a connection's state changes once each, not once per retry."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.up: bool | None = None
        self.recovered = threading.Event()  # set while up: cuts retry waits short

    def ok(self) -> None:
        if self.up is not True:
            log.info("%s %s", self.what, "connected" if self.up is None else "available again")
        self.up = True
        self.recovered.set()

    def down(self, err: object) -> None:
        if self.up is not False:
            log.warning("%s unavailable: %s (retrying with backoff)", self.what, err)
        self.up = False
        self.recovered.clear()


class Worker:
    """One worker process: fetch loop, job threads, heartbeat and reporter."""

    def __init__(self, cfg: WorkerConfig, signals: Signals) -> None:
        self.cfg = cfg
        self.signals = signals
        self.channel = grpc.insecure_channel(cfg.server, options=wire.grpc_options())
        self.stub = pb_grpc.WorkerServiceStub(self.channel)
        self.redis = redis.Redis.from_url(
            cfg.redis_url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=10
        )
        self.queue: RedisQueue | None = None
        self.session = ""
        self.lease_seconds = 30.0
        self.heartbeat_interval = 1.0
        self.run_opts = RunOptions(cfg.max_output, cfg.kill_grace, cfg.cwd)
        self.guard = Guard(cfg.kill_grace)
        self.server_link = Link(f"server {cfg.server}")
        self.redis_link = Link(f"redis {_safe_url(cfg.redis_url)}")
        self._lock = threading.Lock()
        # keyed by (job id, attempt): a stale attempt of a job may still be dying here when
        # the server hands us its next attempt
        self._running: dict[Key, Execution] = {}
        self._threads: dict[Key, threading.Thread] = {}
        self._unreported: dict[Key, Result] = {}
        self._outbox: queue.Queue[Result] = queue.Queue()
        self._slot_free = threading.Event()
        self._draining = False
        self._done = threading.Event()  # tells heartbeat and reporter to finish
        self.exit_code = 0

    # ---- lifecycle ------------------------------------------------------------------------

    def run(self, readiness: Readiness) -> int:
        self.guard.start()
        try:
            if not self._register():
                readiness.failed("stopped before registering")
                return 0
            readiness.ready()
            sd_notify(f"READY=1\nSTATUS=registered as {self.cfg.name}")
            hb = threading.Thread(target=self._heartbeat_loop, name="dts-heartbeat", daemon=True)
            rep = threading.Thread(target=self._report_loop, name="dts-reporter", daemon=True)
            hb.start()
            rep.start()
            self._fetch_loop()
            log.info("stopping: no new jobs; %d running", len(self._running))
            sd_notify("STOPPING=1")
            self._drain()
            self._done.set()
            rep.join(RPC_TIMEOUT + 5)
            hb.join(RPC_TIMEOUT + 5)
            self._unregister()
            log.info("worker %s stopped", self.cfg.name)
            return self.exit_code
        finally:
            self._stop_all(Outcome.RELEASED, "worker exited")
            self.guard.close()
            self.channel.close()

    def _register(self) -> bool:
        request = pb.RegisterRequest(
            name=self.cfg.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            concurrency=self.cfg.concurrency,
            queues=list(self.cfg.queues),
        )
        resp = self._call(lambda: self.stub.Register(request, timeout=RPC_TIMEOUT))
        if resp is None:
            return False
        self.session = resp.session
        self.lease_seconds = resp.lease_seconds
        self.heartbeat_interval = resp.heartbeat_interval
        self.queue = RedisQueue(self.redis, Keys(resp.key_prefix))
        log.info(
            "worker %s registered (dts %s, concurrency %d, queues %s)",
            self.cfg.name,
            __version__,
            self.cfg.concurrency,
            ",".join(self.cfg.queues),
        )
        return True

    def _unregister(self) -> None:
        try:
            self.stub.Unregister(
                pb.UnregisterRequest(name=self.cfg.name, session=self.session), timeout=2
            )
        except grpc.RpcError as e:
            log.info("could not tell the server we stopped: %s", e.code())

    # ---- fetching -------------------------------------------------------------------------

    def _fetch_loop(self) -> None:
        backoff = Backoff(base=0.1, cap=5.0)
        stop = self.signals.stop
        assert self.queue is not None
        while not stop.is_set():
            if self.signals.hup.is_set():
                self.signals.hup.clear()
                self._reload()
            free = self.cfg.concurrency - len(self._running)
            if free <= 0:
                self._slot_free.wait(0.2)
                self._slot_free.clear()
                continue
            if self.server_link.up is False:  # cut off: leave the ids to workers that can claim
                self.server_link.recovered.wait(0.5)
                continue
            try:
                ids = self.queue.pop(self.cfg.queues, free, self.lease_seconds)
                if not ids:
                    self.queue.wait(self.cfg.queues, 1.0)
                    self.redis_link.ok()
                    backoff.reset()
                    continue
                self.redis_link.ok()
                backoff.reset()
            except redis.RedisError as e:
                self.redis_link.down(e)
                backoff.wait(stop)
                continue
            assignments = self._claim(ids)
            try:
                if assignments is None:  # stopping, or the server is away: hand them back
                    self.queue.release(ids)
                else:
                    self.queue.ack(ids)
            except redis.RedisError as e:  # the server's inflight recovery copes with it
                self.redis_link.down(e)
            for a in assignments or ():
                self._start(a)

    def _reload(self) -> None:
        """SIGHUP: reopen log files and apply a changed log level."""
        try:
            fresh = load_worker_config(sys.argv[1:])
        except (DtsError, SystemExit) as e:
            log.error("reload: config not reloaded: %s", e)
            return
        self.cfg = replace(self.cfg, process=logs.reload(self.cfg.process, fresh.process))

    def _claim(self, ids: Sequence[int]) -> list[Assignment] | None:
        """Claim popped ids; None (hand them back) if stopping or the server stays away."""

        def call() -> pb.ClaimResponse:
            req = pb.ClaimRequest(name=self.cfg.name, session=self.session, job_ids=ids)
            return self.stub.Claim(req, timeout=RPC_TIMEOUT)

        resp = self._call(call, give_up_after=min(2.0, self.lease_seconds / 2))
        return [wire.assignment_from_pb(a) for a in resp.assignments] if resp else None

    def _call(self, fn: Callable[[], T], give_up_after: float | None = None) -> T | None:
        """Call the server until it answers, with backoff; None if asked to stop first (or
        the server stayed unreachable for `give_up_after` seconds)."""
        backoff = Backoff(base=0.1, cap=5.0)
        since = time.monotonic()
        while not self.signals.stop.is_set():
            if give_up_after is not None and time.monotonic() - since > give_up_after:
                return None
            try:
                result = fn()
                self.server_link.ok()
                return result
            except grpc.RpcError as e:
                if e.code() in RETRYABLE:
                    self.server_link.down(e.details() or e.code())
                    backoff.wait(self.signals.stop)
                elif e.code() is grpc.StatusCode.ALREADY_EXISTS:
                    self._superseded(e.details() or "")
                    return None
                elif e.code() is grpc.StatusCode.FAILED_PRECONDITION and self.session:
                    log.warning("server does not know session: %s; registering again", e.details())
                    if not self._register():
                        return None
                else:
                    raise wire.error_from_rpc(e, self.cfg.server) from None
        return None

    # ---- running --------------------------------------------------------------------------

    def _start(self, a: Assignment) -> None:
        exe = Execution(a, self.run_opts, self.guard.add, self.guard.remove)
        with self._lock:
            stale = [(k, t) for k, t in self._threads.items() if k[0] == a.job_id]
        for key, _ in stale:  # an older attempt of this job is still here: it is not ours now
            self._running[key].stop(Outcome.RELEASED, "superseded by a newer attempt", True)
        thread = threading.Thread(
            target=self._run_job,
            args=(exe, [t for _, t in stale]),
            name=f"dts-job-{a.job_id}",
            daemon=True,
        )
        with self._lock:
            self._running[(a.job_id, a.attempt)] = exe
            self._threads[(a.job_id, a.attempt)] = thread
        log.info("job %d attempt %d started: %s", a.job_id, a.attempt, a.spec.display[:200])
        thread.start()

    def _run_job(self, exe: Execution, wait_for: Sequence[threading.Thread] = ()) -> None:
        a = exe.assignment
        for t in wait_for:  # never two attempts of one job at once
            t.join()
        try:
            result = exe.run()
        except Exception as e:  # a bug in the runner must not lose the job: report a failure
            log.exception("job %d: runner failed", a.job_id)
            result = Result(a.job_id, a.attempt, Outcome.FAILED, None, f"worker error: {e}")
        log.info(
            "job %d attempt %d %s%s",
            a.job_id,
            a.attempt,
            result.outcome,
            f" (exit {result.exit_code})" if result.exit_code else "",
        )
        with self._lock:
            self._unreported[(a.job_id, a.attempt)] = result
            self._running.pop((a.job_id, a.attempt), None)
            self._threads.pop((a.job_id, a.attempt), None)
        self._outbox.put(result)
        self._slot_free.set()

    def _stop_all(self, outcome: Outcome, reason: str, at_once: bool = False) -> None:
        with self._lock:
            running = list(self._running.values())
        for exe in running:
            exe.stop(outcome, reason, at_once)

    def _drain(self) -> None:
        """Stop taking jobs; let running ones finish within the drain timeout, then stop them."""
        self._draining = True
        with self._lock:
            threads = list(self._threads.values())
        if threads:
            log.info(
                "draining: waiting up to %gs for %d running job(s)",
                self.cfg.drain_timeout,
                len(threads),
            )
        deadline = time.monotonic() + self.cfg.drain_timeout
        # a second SIGTERM (even one that came before the drain began) means: stop them now
        while time.monotonic() < deadline and self.signals.stops < 2:
            with self._lock:
                if not self._threads:
                    break
            self._slot_free.wait(0.2)
            self._slot_free.clear()
        with self._lock:
            left = list(self._threads.values())
        if left:
            log.warning("stopping %d job(s) that did not finish; they will run again", len(left))
            self._stop_all(Outcome.RELEASED, "worker stopped before the job finished")
            for t in left:
                t.join(self.cfg.kill_grace + 5)

    # ---- heartbeat and reports ------------------------------------------------------------

    def _leases(self) -> list[pb.Lease]:
        with self._lock:
            held = [*self._running, *self._unreported]
        return [pb.Lease(job_id=j, attempt=n) for j, n in held]

    def _heartbeat_loop(self) -> None:
        """Renew leases; stop jobs the server no longer gives us; self-fence when cut off.

        The server renews a lease when it receives the heartbeat, which is after we sent it,
        so `sent + lease` is a lower bound of when the server may hand our jobs to another
        worker. We kill them at `sent + FENCE_FRACTION * lease`: the fence deadline is waited
        for on its own, and no heartbeat call may outlive it.
        """
        last_renewed = time.monotonic()
        fenced = False
        next_beat = last_renewed
        while True:
            now = time.monotonic()
            fence_at = last_renewed + self.lease_seconds * FENCE_FRACTION
            if not fenced and now >= fence_at:
                fenced = self._self_fence(now - last_renewed)
            wake = next_beat if fenced else min(next_beat, fence_at)
            if self._done.wait(max(0.0, wake - now)):
                return
            if time.monotonic() < next_beat:
                continue  # woke for the fence check only
            next_beat = time.monotonic() + self.heartbeat_interval
            req = pb.HeartbeatRequest(
                name=self.cfg.name,
                session=self.session,
                leases=self._leases(),
                draining=self._draining,
            )
            sent = time.monotonic()
            budget = self.lease_seconds / 4 if fenced else fence_at - sent
            try:
                resp = self.stub.Heartbeat(
                    req, timeout=max(0.05, min(self.lease_seconds / 4, budget))
                )
            except grpc.RpcError as e:
                if e.code() is grpc.StatusCode.ALREADY_EXISTS:
                    self._superseded(e.details() or "")
                    return
                self.server_link.down(e.details() or e.code())
                continue
            last_renewed, fenced = sent, False
            self.server_link.ok()
            if resp.reregister:
                log.warning("server forgot this worker's session; registering again")
                self._register()
                continue
            for lease in resp.cancel:
                with self._lock:
                    exe = self._running.get((lease.job_id, lease.attempt))
                if exe is not None:
                    log.info(
                        "job %d attempt %d: stopping (cancelled or no longer ours)",
                        lease.job_id,
                        lease.attempt,
                    )
                    exe.stop(Outcome.CANCELLED, "cancelled")

    def _superseded(self, why: str) -> None:
        """Another live process registered under our name: stop, rather than fight over it."""
        if self.exit_code == 0:
            log.error("%s; stopping this worker (give each worker a unique --name)", why)
        self.exit_code = 1
        self._stop_all(Outcome.RELEASED, "worker superseded", at_once=True)
        self.signals.stop.set()
        self.signals.wakeup.set()

    def _self_fence(self, silent_for: float) -> bool:
        with self._lock:
            running = list(self._running.values())
        if running:
            log.error(
                "no lease renewal for %.1fs (lease %gs): killing %d job(s) so they cannot "
                "run twice; they will run again",
                silent_for,
                self.lease_seconds,
                len(running),
            )
        for exe in running:
            exe.stop(
                Outcome.RELEASED,
                f"lease lost: server unreachable for {silent_for:.1f}s",
                at_once=True,
            )
        return True

    def _report_loop(self) -> None:
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            try:
                first = self._outbox.get(timeout=0.2)
            except queue.Empty:
                if self._done.is_set():
                    return
                continue
            batch = [first]
            while len(batch) < REPORT_BATCH:
                try:
                    batch.append(self._outbox.get_nowait())
                except queue.Empty:
                    break
            self._deliver(batch, backoff)

    def _deliver(self, batch: list[Result], backoff: Backoff) -> None:
        req = pb.ReportRequest(
            name=self.cfg.name, session=self.session, results=[wire.result_to_pb(r) for r in batch]
        )
        while True:
            try:
                resp = self.stub.Report(req, timeout=RPC_TIMEOUT)
                break
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE:
                    log.error("server refused %d result(s): %s", len(batch), e.details())
                    self._forget(batch)
                    return
                self.server_link.down(e.details() or e.code())
                if self._done.is_set() and self.signals.stops > 1:
                    log.error("giving up on %d unreported result(s)", len(batch))
                    return
                backoff.wait(self.server_link.recovered)  # retry at once when it is back
        self.server_link.ok()
        backoff.reset()
        for ack in resp.acks:
            if not ack.accepted:
                log.warning(
                    "job %d attempt %d: result refused: %s", ack.job_id, ack.attempt, ack.reason
                )
        self._forget(batch)

    def _forget(self, batch: list[Result]) -> None:
        with self._lock:
            for r in batch:
                if self._unreported.get((r.job_id, r.attempt)) is r:
                    del self._unreported[(r.job_id, r.attempt)]


def _safe_url(url: str) -> str:
    """The Redis URL without a password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = load_worker_config(argv)
    except DtsError as e:
        return fail(PROG, e, 2)
    readiness = daemonize(PROG) if cfg.process.daemon else Readiness(None)
    logs.setup(cfg.process)
    signals = Signals()
    signals.install()
    pidfile = PidFile(cfg.process.pidfile) if cfg.process.pidfile else None
    try:
        if pidfile:
            note = pidfile.acquire()
            if note:
                log.warning("%s", note)
        return Worker(cfg, signals).run(readiness)
    except DtsError as e:
        log.error("%s", e)
        readiness.failed(str(e))
        return fail(PROG, e)
    finally:
        if pidfile:
            pidfile.release()
