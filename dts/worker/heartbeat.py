"""The heartbeat thread: renews leases, stops cancelled jobs, self-fences when cut off."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from dts.domain import Outcome
from dts.v1 import dts_pb2 as pb
from dts.worker.attempts import Attempts
from dts.worker.ending import Ending
from dts.worker.live import LiveSender
from dts.worker.session import RPC_TIMEOUT, Dismissed, Session

log = logging.getLogger("dts.worker")


class Heartbeat:
    """The heartbeat thread and what it tells the server: the leases held, and whether the
    worker is draining."""

    def __init__(
        self,
        session: Session,
        attempts: Attempts,
        ending: Ending,
        live: LiveSender | None = None,
    ) -> None:
        self.session = session
        self.live = live  # told which attempts someone follows
        self.attempts = attempts
        self.ending = ending
        self.draining = False
        self._done = threading.Event()  # tells the heartbeat to finish
        self._thread = threading.Thread(target=self._guarded, name="dts-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the heartbeat (the slots have ended)."""
        self._done.set()
        self._thread.join(RPC_TIMEOUT + 5)

    def _guarded(self) -> None:
        """The heartbeat thread. A bug that ends it stops the worker's jobs now (TERM, KILL
        after --kill-grace, well within a lease): nothing renews their leases or fences them
        any more, so the server would hand them out again while they run."""
        self.ending.guarded(self._run, "heartbeat", stop_jobs=True)

    def _run(self) -> None:
        """Renew leases; stop jobs the server no longer gives us; self-fence when cut off.

        The server renews a lease when it receives the heartbeat, which is after we sent it,
        so `sent + lease` is a lower bound of when the server may hand our jobs to another
        worker. We kill them at `sent + FENCE_FRACTION * lease`: the fence deadline is waited
        for on its own, and no heartbeat call may outlive it.
        """
        session = self.session
        last_renewed = time.monotonic()
        fenced = False
        next_beat = last_renewed
        while True:
            now = time.monotonic()
            fence_at = last_renewed + session.fence_after
            if not fenced and now >= fence_at:
                fenced = self._self_fence(now - last_renewed)
            wake = next_beat if fenced else min(next_beat, fence_at)
            if self._done.wait(max(0.0, wake - now)):
                return
            if time.monotonic() < next_beat:
                continue  # woke for the fence check only
            next_beat = time.monotonic() + session.heartbeat_interval
            req = session.heartbeat_request(self.attempts.leases(), self.draining)
            sent = time.monotonic()
            longest = session.heartbeat_timeout
            budget = longest if fenced else fence_at - sent
            try:
                resp = session.heartbeat(req, timeout=max(0.05, min(longest, budget)))
            except Dismissed:
                return
            if resp is None:
                continue
            last_renewed, fenced = sent, False
            if resp.reregister:
                log.warning("server forgot this worker's session; registering again")
                session.register()
                continue
            session.holds.learn(resp.paused_queues, resp.full_queues)
            self._cancel(resp.cancel)
            if self.live is not None:
                self.live.followed(resp.followed)

    def _cancel(self, leases: Iterable[pb.Lease]) -> None:
        for lease in leases:
            exe = self.attempts.get(lease.job_id, lease.attempt)
            if exe is not None:
                log.info(
                    "job %d attempt %d: stopping (cancelled or no longer ours)",
                    lease.job_id,
                    lease.attempt,
                )
                exe.stop(Outcome.CANCELLED, "cancelled")

    def _self_fence(self, silent_for: float) -> bool:
        running = self.attempts.running()
        if running:
            log.error(
                "no lease renewal for %.1fs (lease %gs): killing %d job(s) so they cannot "
                "run twice; they will run again",
                silent_for,
                self.session.lease_seconds,
                len(running),
            )
        for exe in running:
            exe.stop(
                Outcome.RELEASED,
                f"lease lost: server unreachable for {silent_for:.1f}s",
                at_once=True,
            )
        return True
