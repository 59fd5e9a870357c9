"""dts-worker: registers with the server, takes job ids from Redis, claims and runs them, and
reports results; reconnects with backoff to both the server and Redis.

Threads: one per slot (`--concurrency`), each a loop of "take an id from Redis, report the
previous result and claim the id in one Exchange call, run the job"; a heartbeat thread
renews leases, learns cancellations and self-fences; the main thread waits for signals and
drains. A result stays with its slot until the server has it.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

import grpc

from dts import __version__, wire
from dts.backoff import Backoff
from dts.channel import open_channel
from dts.daemon import logs
from dts.daemon.notify import sd_notify
from dts.daemon.process import PidFile, Readiness, Signals, daemonize, fail
from dts.domain import Assignment, Outcome, Result
from dts.errors import DtsError, QueueUnavailable
from dts.queue.redis import Keys, RedisQueue, connect, redacted_url
from dts.v1 import dts_pb2 as pb
from dts.v1 import dts_pb2_grpc as pb_grpc
from dts.worker.cgroups import JobCgroups, Unavailable
from dts.worker.config import WorkerConfig, load_worker_config
from dts.worker.guard import Guard
from dts.worker.runner import Execution, RunOptions, close_inherited_fds
from dts.worker.sandbox import RunAs, default_cwd, find_prlimit, job_environment

log = logging.getLogger("dts.worker")

PROG = "dts-worker"
RPC_TIMEOUT = 10.0
REGISTER_WAIT = 5.0  # seconds one registration call waits for the server to be reachable
PREFETCH_BELOW = 0.5  # seconds: jobs shorter than this are claimed a few at a time, early
PREFETCH_WORK = 0.1  # seconds of (estimated) work a slot may claim ahead of what it runs
PREFETCH_MAX = 64  # jobs a slot claims at once, however short they are
MAX_RESULT_DELAY = 0.1  # seconds a finished result may wait to ride on the next claim
FENCE_FRACTION = 0.8  # of the lease: kill our jobs when no renewal got through for this long
# A thread of ours died of a bug (sysexits.h EX_SOFTWARE): the worker exits with this, and its
# service manager starts a fresh one, rather than heartbeating on with fewer hands than it shows
EXIT_SOFTWARE = 70
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)

T = TypeVar("T")
Key = tuple[int, int]  # (job id, attempt)
# an Exchange on its way: the call, its request, the results in it, the ids it claims
InFlight = tuple[
    "grpc.Future[pb.ExchangeResponse]", pb.ExchangeRequest, list[Result], list[int], "Claimed"
]


class Claimed:
    """The attempts an Exchange sent while a job runs claims, held (known to the heartbeat,
    which renews their leases) the moment its answer arrives, by whichever comes first: the
    call's completion or the slot. Held only when the slot took the answer, they would go
    unrenewed behind a long job and be handed to another worker meanwhile."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: list[Execution] | None = None

    def take(self, hold: Callable[[], list[Execution]]) -> list[Execution]:
        with self._lock:
            if self._held is None:
                self._held = hold()
            return self._held


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
    """One worker process: slot threads, heartbeat, and the main thread's signal handling."""

    def __init__(self, cfg: WorkerConfig, signals: Signals) -> None:
        self.cfg = cfg
        self.signals = signals
        self.channel = open_channel(cfg.server, cfg.security, wire.grpc_options())
        self.stub = pb_grpc.WorkerServiceStub(self.channel)
        self.redis = connect(cfg.redis_url)
        self.queue: RedisQueue | None = None
        self.session = ""
        self.lease_seconds = 30.0
        self.heartbeat_interval = 1.0
        run_as = RunAs.lookup(cfg.run_as) if cfg.run_as else None
        self.run_opts = RunOptions(
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
        self.server_link = Link(f"server {cfg.server}")
        self.redis_link = Link(f"redis {redacted_url(cfg.redis_url)}")
        self._lock = threading.Lock()
        # keyed by (job id, attempt): a stale attempt of a job may still be dying here when
        # the server hands us its next attempt
        self._running: dict[Key, Execution] = {}
        self._held: Counter[int] = Counter()  # job id -> its attempts in _running
        self._unreported: dict[Key, Result] = {}
        self._draining = False
        self._done = threading.Event()  # tells the heartbeat to finish
        self.exit_code = 0
        self.crashed = False  # a slot or the heartbeat died of a bug

    # ---- lifecycle ------------------------------------------------------------------------

    def run(self, readiness: Readiness) -> int:
        cgroups = self._cgroups()  # first: the guard must start in the worker's new cgroup
        try:
            self.guard.start(cgroups)
            if not self._register():
                readiness.failed("refused" if self.exit_code else "stopped before registering")
                return self.exit_code
            readiness.ready()
            sd_notify(f"READY=1\nSTATUS=registered as {self.cfg.name}")
            hb = threading.Thread(target=self._heartbeat_loop, name="dts-heartbeat", daemon=True)
            hb.start()
            slots = [
                threading.Thread(target=self._slot_loop, name=f"dts-slot-{i}", daemon=True)
                for i in range(self.cfg.concurrency)
            ]
            for t in slots:
                t.start()
            while not self.signals.stop.is_set():
                self.signals.wakeup.wait(1.0)
                self.signals.wakeup.clear()
                if self.signals.hup.is_set():
                    self.signals.hup.clear()
                    self._reload()
            log.info("stopping: no new jobs; %d running", len(self._running))
            sd_notify("STOPPING=1")
            self._drain(slots)
            self._done.set()
            hb.join(RPC_TIMEOUT + 5)
            self._unregister()
            log.info("worker %s stopped", self.cfg.name)
            return self.exit_code
        finally:
            self._stop_all(Outcome.RELEASED, "worker exited")
            if cgroups is not None:
                cgroups.close()  # ends the guard too: it lives in the tree
            self.guard.close()
            self.channel.close()

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
        self.run_opts = replace(self.run_opts, cgroups=cgroups)
        return cgroups

    def _register(self) -> bool:
        request = pb.RegisterRequest(
            name=self.cfg.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            concurrency=self.cfg.concurrency,
            queues=list(self.cfg.queues),
        )
        # wait_for_ready: while the server is away the call waits for the channel to connect,
        # so registration follows the server's return at once instead of after a backoff
        resp = self._call(
            lambda: self.stub.Register(request, timeout=REGISTER_WAIT, wait_for_ready=True)
        )
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

    # ---- threads --------------------------------------------------------------------------

    def _slot_loop(self) -> None:
        """A slot thread. A bug that ends it stops the worker after a drain: the other slots'
        jobs are healthy and may finish (and be reported) while the heartbeat goes on."""
        self._guarded(self._slot, "slot", stop_jobs=False)

    def _heartbeat_loop(self) -> None:
        """The heartbeat thread. A bug that ends it stops the worker's jobs now (TERM, KILL
        after --kill-grace, well within a lease): nothing renews their leases or fences them
        any more, so the server would hand them out again while they run."""
        self._guarded(self._heartbeat, "heartbeat", stop_jobs=True)

    def _guarded(self, body: Callable[[], None], what: str, stop_jobs: bool) -> None:
        try:
            body()
        except BaseException:  # the top of a thread: nobody else would see it
            log.critical(
                "%s thread %s died of an unexpected error; stopping the worker (exit %d)",
                what,
                threading.current_thread().name,
                EXIT_SOFTWARE,
                exc_info=True,
            )
            self.crashed = True
            if not self.exit_code:
                self.exit_code = EXIT_SOFTWARE
            if stop_jobs:
                self._stop_all(Outcome.RELEASED, f"worker stopping: its {what} failed")
            self.signals.stop.set()
            self.signals.wakeup.set()

    # ---- slots ----------------------------------------------------------------------------

    def _slot(self) -> None:
        """Claim and run jobs; results ride on the next claim.

        While jobs are short (under PREFETCH_BELOW), the slot claims several at a time and
        sends each Exchange while it goes on running jobs, so round trips neither sit between
        jobs nor happen once per job: the next batch is asked for when half of the current
        one is left. How many: about PREFETCH_WORK seconds of work by the slot's average job,
        so a slot sits on at most about a tenth of a second of other workers' work. After a
        long job it hands back what it claimed ahead (but the next job) and then claims one
        job at a time, and only when free, leaving the rest to idle workers.
        """
        backoff = Backoff(base=0.1, cap=5.0)
        done: list[Result] = []  # finished here, not yet acknowledged by the server
        ready: list[Execution] = []  # claimed here, not yet started
        to_ack: list[int] = []  # ids claimed (or found unclaimable): to drop from inflight
        short = False
        batch = 1  # jobs to claim at once: PREFETCH_WORK by the average job, while short
        average = PREFETCH_BELOW  # seconds: this slot's recent job durations, on average
        oldest = 0.0  # when the oldest unsent result finished
        pending: InFlight | None = None  # an Exchange sent while jobs run
        # The last pop found fewer ids than it asked for: the queue is (most likely) empty, so
        # a result is reported without asking Redis again first; an enqueue's wake token
        # brings the slot back to Redis.
        drained = False
        while True:
            stopping = self.signals.stop.is_set()
            if pending is not None and (not ready or pending[0].done()):
                call, req, sent, ids, claimed = pending
                pending = None
                resp = self._collect(call, req)
                if resp is not None and call.done() and not call.exception():
                    self._absorb(resp, sent, ids, done, ready, to_ack, claimed)
                else:  # answered, if at all, by the patient path: its own claims
                    self._absorb(resp, sent, ids, done, ready, to_ack)
                continue
            if ready:
                exe = ready.pop(0)
                if stopping:  # hand it back at once: it has not started
                    exe.stop(Outcome.RELEASED, "worker stopping before the job started")
                if pending is None:
                    refill = (
                        short and not stopping and not drained and len(ready) < max(1, batch // 2)
                    )
                    if (
                        refill
                        or len(done) >= 2 * batch  # refills carry them, mostly
                        or (bool(done) and time.monotonic() - oldest > MAX_RESULT_DELAY)
                    ):
                        ids = self._take(batch, to_ack) if refill else []
                        if refill:
                            drained = len(ids) < batch
                        if done or ids:
                            pending = self._send_ahead(list(done), ids)
                result = self._execute(exe)
                took = max(0.0, result.finished_at - result.started_at)
                # a moving average while jobs stay short; the first short one sets it afresh
                average = 0.8 * average + 0.2 * took if short and took < PREFETCH_BELOW else took
                short = took < PREFETCH_BELOW
                batch = prefetch_count(average) if short else 1
                if len(done) == (len(pending[2]) if pending else 0):
                    oldest = time.monotonic()  # the first result not yet sent
                done.append(result)
                if not short and len(ready) > 1:
                    # claimed ahead while jobs were short, and now they are long: keep the
                    # next one, hand the rest back so idle workers need not wait behind us
                    for held in ready[1:]:
                        held.stop(Outcome.RELEASED, "handed back unstarted: jobs here got long")
                        done.append(self._execute(held))
                    del ready[1:]
                continue
            if stopping and not done:
                self._take(0, to_ack)
                return
            count = 0 if stopping or drained else batch
            ids = self._take(count, to_ack) if count or not done else []
            if count:
                drained = len(ids) < count
            if not done and not ids:
                ids = self._idle(backoff, to_ack, batch)
                drained = len(ids) < batch
                if not ids:
                    continue
            sent = list(done)
            resp = self._exchange(self._request(sent, ids))
            if not self._absorb(resp, sent, ids, done, ready, to_ack):
                if done and self.signals.stops > 1:
                    log.error("%d result(s) not delivered (stopping now)", len(done))
                    self._forget(done)
                    return
                backoff.wait(self.server_link.recovered)  # retry at once when it is back
                continue
            backoff.reset()

    def _take(self, count: int, to_ack: list[int]) -> list[int]:
        """Pop up to `count` ids (acknowledging `to_ack` on the way); [] if Redis is away."""
        assert self.queue is not None
        if count == 0 and not to_ack:
            return []
        if self.server_link.up is False:
            count = 0  # cut off from the server: leave ids to workers that can claim them
        try:
            ids = self.queue.pop(self.cfg.queues, count, self.lease_seconds, to_ack)
            self.redis_link.ok()
        except QueueUnavailable as e:
            self.redis_link.down(e)
            return []
        to_ack.clear()
        return ids

    def _send_ahead(self, results: list[Result], ids: list[int]) -> InFlight:
        """Send an Exchange and go on running jobs; what it claims is held on arrival."""
        req = self._request(results, ids)
        call = self.stub.Exchange.future(req, timeout=RPC_TIMEOUT)
        claimed = Claimed()

        def arrived(f: grpc.Future[pb.ExchangeResponse]) -> None:
            if not f.cancelled() and f.exception() is None:
                claimed.take(lambda: self._hold_all(f.result()))

        call.add_done_callback(arrived)
        return call, req, results, ids, claimed

    def _hold_all(self, resp: pb.ExchangeResponse) -> list[Execution]:
        return [self._hold(wire.assignment_from_pb(a)) for a in resp.assignments]

    def _absorb(
        self,
        resp: pb.ExchangeResponse | None,
        sent: list[Result],
        ids: list[int],
        done: list[Result],
        ready: list[Execution],
        to_ack: list[int],
        claimed: Claimed | None = None,
    ) -> bool:
        """Apply an Exchange answer; False (ids handed back, results kept) if there was none."""
        if resp is None:
            try:
                if ids and self.queue is not None:
                    self.queue.release(ids)
            except QueueUnavailable as e:  # the server's inflight recovery copes with it
                self.redis_link.down(e)
            return False
        to_ack.extend(ids)
        self._forget(sent)
        del done[: len(sent)]
        for ack in resp.acks:
            if not ack.accepted:
                log.warning(
                    "job %d attempt %d: result refused: %s", ack.job_id, ack.attempt, ack.reason
                )
        if claimed is not None:
            ready.extend(claimed.take(lambda: self._hold_all(resp)))
        else:
            ready.extend(self._hold_all(resp))
        return True

    def _idle(self, backoff: Backoff, to_ack: list[int], count: int) -> list[int]:
        """Nothing to report and nothing queued: wait for an enqueue (and take up to `count`
        ids the moment it comes), or for a link to heal. Ids claimed since the last pop are
        acknowledged first (off the path of any job)."""
        assert self.queue is not None
        if to_ack:
            self._take(0, to_ack)
        if self.server_link.up is False:
            self.server_link.recovered.wait(0.5)
            return []
        try:
            ids = self.queue.wait_and_pop(self.cfg.queues, 1.0, count, self.lease_seconds)
            self.redis_link.ok()
            backoff.reset()
            if ids and self.signals.stop.is_set():  # told to stop while waiting: not ours
                self.queue.release(ids)
                return []
            return ids
        except QueueUnavailable as e:
            self.redis_link.down(e)
            backoff.wait(self.signals.stop)
            return []

    def _request(self, results: list[Result], ids: list[int]) -> pb.ExchangeRequest:
        return pb.ExchangeRequest(
            name=self.cfg.name,
            session=self.session,
            results=[wire.result_to_pb(r) for r in results],
            claim=ids,
        )

    def _collect(
        self, call: grpc.Future[pb.ExchangeResponse], req: pb.ExchangeRequest
    ) -> pb.ExchangeResponse | None:
        """The answer to an Exchange sent while the job ran; on failure, the patient
        synchronous path takes over (backoff, registering again, giving up claims)."""
        try:
            resp: pb.ExchangeResponse = call.result()
            self.server_link.ok()
            return resp
        except grpc.RpcError:
            return self._exchange(req)

    def _exchange(self, req: pb.ExchangeRequest) -> pb.ExchangeResponse | None:
        """Report results and claim ids in one call. Claims are given up after a short
        while without the server (the ids go back to other workers); results are kept
        trying until a second stop signal."""

        def call() -> pb.ExchangeResponse:
            req.session = self.session  # it changes when we register again
            resp: pb.ExchangeResponse = self.stub.Exchange(req, timeout=RPC_TIMEOUT)
            return resp

        if req.claim:
            return self._call(call, give_up_after=min(2.0, self.lease_seconds / 2))
        return self._call(call, until=lambda: self.signals.stops > 1)

    def _reload(self) -> None:
        """SIGHUP: reopen log files and apply a changed log level."""
        try:
            fresh = load_worker_config(sys.argv[1:])
        except (DtsError, SystemExit) as e:
            log.error("reload: config not reloaded: %s", e)
            return
        self.cfg = replace(self.cfg, process=logs.reload(self.cfg.process, fresh.process))

    def _call(
        self,
        fn: Callable[[], T],
        give_up_after: float | None = None,
        until: Callable[[], bool] | None = None,
    ) -> T | None:
        """Call the server until it answers, with backoff. None when `until()` says stop
        (default: a stop signal) or the server stayed away for `give_up_after` seconds."""
        backoff = Backoff(base=0.1, cap=5.0)
        since = time.monotonic()
        stop = until or self.signals.stop.is_set
        while True:  # at least one try, even when already stopping
            try:
                result = fn()
                self.server_link.ok()
                return result
            except grpc.RpcError as e:
                if e.code() in RETRYABLE:
                    self.server_link.down(e.details() or e.code())
                    give_up = give_up_after is not None and (
                        time.monotonic() - since > give_up_after
                    )
                    if stop() or give_up:
                        return None
                    if e.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:  # that one waited
                        self._pause(backoff.next_delay(), stop)
                elif e.code() is grpc.StatusCode.ALREADY_EXISTS:
                    self._superseded(e.details() or "")
                    return None
                elif e.code() in REFUSED:
                    self._refused(e)
                    return None
                elif e.code() is grpc.StatusCode.FAILED_PRECONDITION and self.session:
                    log.warning("server does not know session: %s; registering again", e.details())
                    if not self._register():
                        return None
                else:
                    raise wire.error_from_rpc(e, self.cfg.server) from None

    def _pause(self, delay: float, stop: Callable[[], bool]) -> None:
        """Sleep `delay`, cut short when the server is back or `stop()` turns true."""
        end = time.monotonic() + delay
        while not stop() and time.monotonic() < end:
            if self.server_link.recovered.wait(min(0.1, max(0.0, end - time.monotonic()))):
                return

    # ---- running --------------------------------------------------------------------------

    def _hold(self, a: Assignment) -> Execution:
        """A claimed attempt, known to the heartbeat (renewed, cancellable) before it starts."""
        exe = Execution(a, self.run_opts, self.guard.add, self.guard.remove)
        with self._lock:
            self._running[(a.job_id, a.attempt)] = exe
            self._held[a.job_id] += 1
        return exe

    def _execute(self, exe: Execution) -> Result:
        """Run a held attempt in this slot's thread; its result is kept until reported."""
        a = exe.assignment
        key = (a.job_id, a.attempt)
        with self._lock:
            stale = (
                [e for k, e in self._running.items() if k[0] == a.job_id and e is not exe]
                if self._held[a.job_id] > 1
                else []
            )
        for old in stale:  # an older attempt of this job is still here: it is not ours now
            old.stop(Outcome.RELEASED, "superseded by a newer attempt", at_once=True)
        deadline = time.monotonic() + self.cfg.kill_grace + 5
        while stale and time.monotonic() < deadline:  # never two attempts of one job at once
            with self._lock:
                stale = [e for e in stale if e in self._running.values()]
            time.sleep(0.01)
        verbose = log.isEnabledFor(logging.INFO)
        if verbose:
            log.info("job %d attempt %d started: %s", a.job_id, a.attempt, a.spec.display[:200])
        try:
            result = exe.run()
        except Exception as e:  # a bug in the runner must not lose the job: report a failure
            log.exception("job %d: runner failed", a.job_id)
            result = Result(a.job_id, a.attempt, Outcome.FAILED, None, f"worker error: {e}")
        if verbose:
            log.info(
                "job %d attempt %d %s%s",
                a.job_id,
                a.attempt,
                result.outcome,
                f" (exit {result.exit_code})" if result.exit_code else "",
            )
        with self._lock:
            self._unreported[key] = result
            if self._running.pop(key, None) is not None:
                self._held[a.job_id] -= 1
                if not self._held[a.job_id]:
                    del self._held[a.job_id]
        return result

    def _stop_all(self, outcome: Outcome, reason: str, at_once: bool = False) -> None:
        with self._lock:
            running = list(self._running.values())
        for exe in running:
            exe.stop(outcome, reason, at_once)

    def _drain(self, slots: list[threading.Thread]) -> None:
        """Let running jobs finish within the drain timeout (or until a second stop signal),
        then stop the rest; every slot delivers its last result before it ends."""
        self._draining = True
        if self._running:
            log.info(
                "draining: waiting up to %gs for %d running job(s)",
                self.cfg.drain_timeout,
                len(self._running),
            )
        deadline = time.monotonic() + self.cfg.drain_timeout
        # a second SIGTERM (even one that came before the drain began) means: stop them now
        while any(t.is_alive() for t in slots):
            if time.monotonic() >= deadline or self.signals.stops >= 2:
                if self._running:
                    log.warning(
                        "stopping %d job(s) that did not finish; they will run again",
                        len(self._running),
                    )
                    self._stop_all(Outcome.RELEASED, "worker stopped before the job finished")
                for t in slots:
                    t.join(self.cfg.kill_grace + RPC_TIMEOUT + 5)
                break
            self.signals.wakeup.wait(0.1)
            self.signals.wakeup.clear()
        if self.crashed and not any(t.is_alive() for t in slots):
            self._hand_back_orphans()

    def _hand_back_orphans(self) -> None:
        """After a slot died, report what only it knew of: results it never sent, and attempts
        it claimed but never started (released: they run again at once, without counting as
        lost). Best effort, one try: what does not get through the server recovers as lost."""
        with self._lock:
            orphans = list(self._running.values())
        try:
            for exe in orphans:  # stopped before it started: run() spawns nothing
                exe.stop(Outcome.RELEASED, "worker stopping: the slot that claimed it failed")
                self._execute(exe)
            with self._lock:
                results = list(self._unreported.values())
            if not results:
                return
            log.info("reporting %d result(s) of the slot that failed", len(results))
            req = self._request(results, [])
            resp = self._call(
                lambda: self.stub.Exchange(req, timeout=RPC_TIMEOUT), until=lambda: True
            )
        except Exception:  # the bug may well be in this path too; the server recovers them
            log.exception("could not report the failed slot's jobs; the server recovers them")
            return
        if resp is not None:
            self._forget(results)

    # ---- heartbeat ------------------------------------------------------------

    def _leases(self) -> list[pb.Lease]:
        with self._lock:
            held = [*self._running, *self._unreported]
        return [pb.Lease(job_id=j, attempt=n) for j, n in held]

    def _heartbeat(self) -> None:
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
                if e.code() in REFUSED:
                    self._refused(e)
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

    def _refused(self, e: grpc.RpcError) -> None:
        """The server refused our credentials: nothing we send will be accepted; stop."""
        if self.exit_code == 0:
            log.error(
                "server %s refused this worker's credentials (%s): %s; stopping",
                self.cfg.server,
                e.code().name,
                e.details(),
            )
        self.exit_code = 1
        self._stop_all(Outcome.RELEASED, "worker credentials refused", at_once=True)
        self.signals.stop.set()
        self.signals.wakeup.set()

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

    def _forget(self, batch: list[Result]) -> None:
        with self._lock:
            for r in batch:
                if self._unreported.get((r.job_id, r.attempt)) is r:
                    del self._unreported[(r.job_id, r.attempt)]


def prefetch_count(average: float) -> int:
    """Jobs to claim at once when a slot's jobs take `average` seconds: PREFETCH_WORK's worth,
    at least one, at most PREFETCH_MAX."""
    if average <= 0:
        return PREFETCH_MAX
    return max(1, min(PREFETCH_MAX, int(PREFETCH_WORK / average)))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = load_worker_config(argv)
    except DtsError as e:
        return fail(PROG, e, 2)
    readiness = daemonize(PROG) if cfg.process.daemon else Readiness(None)
    close_inherited_fds()  # jobs must not get what the worker inherited
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
