"""The slot threads: take ids, claim ahead, run jobs, report results; the drain, the orphans."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc

from dts import wire
from dts.backoff import Backoff
from dts.daemon.process import Signals
from dts.domain import Outcome, Result
from dts.v1 import dts_pb2 as pb
from dts.worker.attempts import Attempts
from dts.worker.ending import Ending
from dts.worker.feed import Feed
from dts.worker.live import LiveSender
from dts.worker.overtime import Overtime
from dts.worker.runner import Execution
from dts.worker.session import RPC_TIMEOUT, Session

log = logging.getLogger("dts.worker")

PREFETCH_BELOW = 0.5  # seconds: jobs shorter than this are claimed a few at a time, early
PREFETCH_WORK = 0.1  # seconds of (estimated) work a slot may claim ahead of what it runs
PREFETCH_MAX = 64  # jobs a slot claims at once, however short they are
MAX_RESULT_DELAY = 0.1  # seconds a finished result may wait to ride on the next claim

# an Exchange on its way: the call, its request, the results in it, the ids it claims
InFlight = tuple[
    "grpc.Future[pb.ExchangeResponse]", pb.ExchangeRequest, list[Result], list[int], "Claimed"
]


def prefetch_count(average: float) -> int:
    """Jobs to claim at once when a slot's jobs take `average` seconds: PREFETCH_WORK's worth,
    at least one, at most PREFETCH_MAX."""
    if average <= 0:
        return PREFETCH_MAX
    return max(1, min(PREFETCH_MAX, int(PREFETCH_WORK / average)))


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


class Slots:
    """The worker's slot threads: started together, drained together."""

    def __init__(
        self,
        concurrency: int,
        session: Session,
        feed: Feed,
        attempts: Attempts,
        ending: Ending,
        signals: Signals,
        live: LiveSender | None = None,
    ) -> None:
        self.session = session
        self.live = live  # told which claimed attempts someone follows
        self.feed = feed
        self.attempts = attempts
        self.ending = ending
        self.signals = signals
        self._threads = [
            threading.Thread(target=self._guarded, name=f"dts-slot-{i}", daemon=True)
            for i in range(concurrency)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def new(self) -> SlotLoop:
        """One slot's loop, not started."""
        loop = SlotLoop(self.session, self.feed, self.attempts, self.signals)
        loop.live = self.live
        return loop

    def _guarded(self) -> None:
        """A slot thread. A bug that ends it stops the worker after a drain: the other slots'
        jobs are healthy and may finish (and be reported) while the heartbeat goes on."""
        self.ending.guarded(lambda: self.new().run(), "slot", stop_jobs=False)

    def drain(self, timeout: float, kill_grace: float) -> None:
        """Let running jobs finish within `timeout` (or until a second stop signal), then stop
        the rest; every slot delivers its last result before it ends."""
        slots = self._threads
        if self.attempts.count():
            log.info(
                "draining: waiting up to %gs for %d running job(s)",
                timeout,
                self.attempts.count(),
            )
        deadline = time.monotonic() + timeout
        # a second SIGTERM (even one that came before the drain began) means: stop them now
        while any(t.is_alive() for t in slots):
            if time.monotonic() >= deadline or self.signals.stops >= 2:
                if self.attempts.count():
                    log.warning(
                        "stopping %d job(s) that did not finish; they will run again",
                        self.attempts.count(),
                    )
                    self.attempts.stop_all(
                        Outcome.RELEASED, "worker stopped before the job finished"
                    )
                for t in slots:
                    t.join(kill_grace + RPC_TIMEOUT + 5)
                break
            self.signals.wakeup.wait(0.1)
            self.signals.wakeup.clear()
        if self.ending.crashed and not any(t.is_alive() for t in slots):
            self._hand_back_orphans()

    def _hand_back_orphans(self) -> None:
        """After a slot died, report what only it knew of: results it never sent, and attempts
        it claimed but never started (released: they run again at once, without counting as
        lost). Best effort, one try: what does not get through the server recovers as lost."""
        orphans = self.attempts.running()
        try:
            for exe in orphans:  # stopped before it started: run() spawns nothing
                exe.stop(Outcome.RELEASED, "worker stopping: the slot that claimed it failed")
                self.attempts.execute(exe)
            results = self.attempts.unreported()
            if not results:
                return
            log.info("reporting %d result(s) of the slot that failed", len(results))
            resp = self.session.exchange_once(self.session.request(results, []))
        except Exception:  # the bug may well be in this path too; the server recovers them
            log.exception("could not report the failed slot's jobs; the server recovers them")
            return
        if resp is not None:
            self.attempts.forget(results)


class SlotLoop:
    """One slot's loop: claim and run jobs; results ride on the next claim.

    While jobs are short (under PREFETCH_BELOW), the slot claims several at a time and sends
    each Exchange while it goes on running jobs, so round trips neither sit between jobs nor
    happen once per job: the next batch is asked for when half of the current one is left.
    How many: about PREFETCH_WORK seconds of work by the slot's average job, so a slot sits on
    at most about a tenth of a second of other workers' work. After a long job it hands back
    what it claimed ahead (but the next job) and then claims one job at a time, and only when
    free, leaving the rest to idle workers.
    """

    def __init__(self, session: Session, feed: Feed, attempts: Attempts, signals: Signals) -> None:
        self.session = session
        self.feed = feed
        self.attempts = attempts
        self.signals = signals
        self.backoff = Backoff(base=0.1, cap=5.0)
        self.done: list[Result] = []  # finished here, not yet acknowledged by the server
        self.ready: list[Execution] = []  # claimed here, not yet started
        self.overtime = Overtime("dts-slot-overtime")  # while a job runs: what falls due
        self.to_ack: list[int] = []  # ids claimed (or found unclaimable): to drop from inflight
        self.short = False
        self.batch = 1  # jobs to claim at once: PREFETCH_WORK by the average job, while short
        self.average = PREFETCH_BELOW  # seconds: this slot's recent job durations, on average
        self.oldest = 0.0  # when the oldest unsent result finished
        self.pending: InFlight | None = None  # an Exchange sent while jobs run
        self.live: LiveSender | None = None  # told which claimed attempts someone follows
        # The last pop found fewer ids than it asked for: the queue is (most likely) empty, so
        # a result is reported without asking Redis again first; an enqueue's wake token
        # brings the slot back to Redis.
        self.drained = False

    def run(self) -> None:
        ready, done = self.ready, self.done
        run_next, stop = self._run_next, self.signals.stop  # locals: the per-job loop
        while True:
            stopping = stop.is_set()
            pending = self.pending
            if pending is not None and (not ready or pending[0].done()):
                self.pending = None
                self._arrived(pending)
                continue
            if ready:
                run_next(stopping)
                continue
            if stopping and not done:
                self.feed.take(0, self.to_ack)
                return
            if not self._claim(stopping):
                return

    def _run_next(self, stopping: bool) -> None:
        """Run the next claimed job, sending the next claim (with the results so far) ahead
        of it when it is time to."""
        ready, done = self.ready, self.done
        exe = ready.pop(0)
        if stopping:  # hand it back at once: it has not started
            exe.stop(Outcome.RELEASED, "worker stopping before the job started")
        if self.pending is None:
            batch = self.batch
            refill = (
                self.short and not stopping and not self.drained and len(ready) < max(1, batch // 2)
            )
            if (
                refill
                or len(done) >= 2 * batch  # refills carry them, mostly
                or (bool(done) and time.monotonic() - self.oldest > MAX_RESULT_DELAY)
            ):
                ids = self.feed.take(batch, self.to_ack) if refill else []
                if refill:
                    self.drained = len(ids) < batch
                if done or ids:
                    self.pending = self._send_ahead(list(done), ids)
        result = self._execute(exe)
        took = max(0.0, result.finished_at - result.started_at) if result.started_at else 0.0
        # a moving average while jobs stay short; the first short one sets it afresh
        short = took < PREFETCH_BELOW
        self.average = 0.8 * self.average + 0.2 * took if self.short and short else took
        self.short = short
        self.batch = prefetch_count(self.average) if short else 1
        if len(done) == (len(self.pending[2]) if self.pending else 0):
            self.oldest = time.monotonic()  # the first result not yet sent
        done.append(result)
        if not short and len(ready) > 1:
            # claimed ahead while jobs were short, and now they are long: keep the
            # next one, hand the rest back so idle workers need not wait behind us
            for held in ready[1:]:
                held.stop(Outcome.RELEASED, "handed back unstarted: jobs here got long")
                done.append(self.attempts.execute(held))
            del ready[1:]

    def _execute(self, exe: Execution) -> Result:
        """Run a job; while it runs, results and claims that would wait behind it are seen to
        (see `_overtime`)."""
        if not (self.done or self.ready or self.pending):
            return self.attempts.execute(exe)
        started = time.monotonic()
        self.overtime.start(MAX_RESULT_DELAY, lambda: self._overtime(started))
        try:
            return self.attempts.execute(exe)
        finally:
            self.overtime.end()

    def _overtime(self, started: float) -> float | None:
        """A job runs on while results or claimed attempts wait behind it (the slot's thread
        waits for the job; this runs in the overtime watch's). Results are sent once the job
        has run MAX_RESULT_DELAY (they waited at least that long). Once the job is long
        (PREFETCH_BELOW), the attempts claimed ahead of it are handed back, unstarted, for
        free slots to take: held here, they would count as running, against their queue's run
        limit too, until the job ended. Returns when to look again (None: not for this job)."""
        if self.pending is not None:  # take its answer (and claims) first: one at a time
            pending, self.pending = self.pending, None
            self._arrived(pending)
        ran = time.monotonic() - started
        if ran >= PREFETCH_BELOW:
            for held in self.ready:
                held.stop(Outcome.RELEASED, "handed back unstarted: the job before it runs long")
                self.done.append(self.attempts.execute(held))
            self.ready.clear()
        if self.done:
            self.pending = self._send_ahead(list(self.done), [])
        return None if ran >= PREFETCH_BELOW else PREFETCH_BELOW - ran

    def _claim(self, stopping: bool) -> bool:
        """Nothing claimed is left to run: report the results and claim more, in one call
        (waiting for an enqueue when there is nothing to report). False: the slot ends."""
        done = self.done
        count = 0 if stopping or self.drained else self.batch
        ids = self.feed.take(count, self.to_ack) if count or not done else []
        if count:
            self.drained = len(ids) < count
        if not done and not ids:
            ids = self.feed.idle(self.backoff, self.to_ack, self.batch)
            self.drained = len(ids) < self.batch
            if not ids:
                return True
        sent = list(done)
        resp = self.session.exchange(self.session.request(sent, ids))
        if not self._absorb(resp, sent, ids):
            if done and self.signals.stops > 1:
                log.error("%d result(s) not delivered (stopping now)", len(done))
                self.attempts.forget(done)
                return False
            self.backoff.wait(self.session.link.recovered)  # retry at once when it is back
            return True
        self.backoff.reset()
        return True

    def _send_ahead(self, results: list[Result], ids: list[int]) -> InFlight:
        """Send an Exchange and go on running jobs; what it claims is held on arrival."""
        req = self.session.request(results, ids)
        call = self.session.send(req)
        claimed = Claimed()

        def arrived(f: grpc.Future[pb.ExchangeResponse]) -> None:
            if not f.cancelled() and f.exception() is None:
                claimed.take(lambda: self._hold_all(f.result()))

        call.add_done_callback(arrived)
        return call, req, results, ids, claimed

    def _arrived(self, pending: InFlight) -> None:
        """Take the answer of the Exchange sent ahead (waiting for it if need be)."""
        call, req, sent, ids, claimed = pending
        resp = self.session.collect(call, req)
        if resp is not None and call.done() and not call.exception():
            self._absorb(resp, sent, ids, claimed)
        else:  # answered, if at all, by the patient path: its own claims
            self._absorb(resp, sent, ids)

    def _hold_all(self, resp: pb.ExchangeResponse) -> list[Execution]:
        held = [self.attempts.hold(wire.assignment_from_pb(a)) for a in resp.assignments]
        if resp.followed and self.live is not None:  # followed already (submit --wait)
            self.live.followed(resp.followed, only_add=True)
        return held

    def _absorb(
        self,
        resp: pb.ExchangeResponse | None,
        sent: list[Result],
        ids: list[int],
        claimed: Claimed | None = None,
    ) -> bool:
        """Apply an Exchange answer; False (ids handed back, results kept) if there was none."""
        if resp is None:
            self.feed.release(ids)
            return False
        self.to_ack.extend(ids)
        self.session.holds.learn(resp.paused_queues, resp.full_queues)
        self.attempts.forget(sent)
        del self.done[: len(sent)]
        for ack in resp.acks:
            if not ack.accepted:
                log.warning(
                    "job %d attempt %d: result refused: %s", ack.job_id, ack.attempt, ack.reason
                )
        if claimed is not None:
            self.ready.extend(claimed.take(lambda: self._hold_all(resp)))
        else:
            self.ready.extend(self._hold_all(resp))
        return True
