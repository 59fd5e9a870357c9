"""The live sender: while the server says someone follows an attempt this worker runs, its
output goes to the server in batches (SendOutput); while nobody follows, nothing is done."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

import grpc

from dts import wire_live
from dts.v1 import dts_pb2 as pb
from dts.worker.attempts import Attempts
from dts.worker.session import Session
from dts.worker.tap import Tap

log = logging.getLogger("dts.worker")

BATCH_EVERY = 0.25  # seconds between two sends while something is followed
SEND_TIMEOUT = 5.0  # seconds one send may take


class LiveSender:
    """Taps the followed attempts (told by heartbeats and claims) and sends what they read."""

    def __init__(self, session: Session, attempts: Attempts) -> None:
        self.session = session
        self.attempts = attempts
        self.sends = 0  # SendOutput calls made (for tests and logs)
        self._tapped = False  # some attempt may have a tap: the heartbeat has work to do
        self._wake = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dts-live", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._wake.set()
        self._thread.join(SEND_TIMEOUT + 1)

    def followed(self, leases: Iterable[pb.Lease], only_add: bool = False) -> None:
        """The server's list of followed leases: tap those, untap the others (unless
        `only_add`: a claim's answer names only the attempts it claimed)."""
        wanted = {(lease.job_id, lease.attempt) for lease in leases}
        if not wanted and (only_add or not self._tapped):
            return  # the common case: nobody follows anything
        tapped = False
        for exe in self.attempts.running():
            key = (exe.assignment.job_id, exe.assignment.attempt)
            if key in wanted:
                if exe.tap is None:
                    exe.tap = Tap(*key)
                tapped = True
            elif exe.tap is not None and not only_add:
                exe.tap = None
            tapped = tapped or exe.tap is not None
        self._tapped = tapped
        if tapped:
            self._wake.set()

    def _run(self) -> None:
        while not self._done.is_set():
            if not self._tapped:
                self._wake.wait()
                self._wake.clear()
                continue
            if self._done.wait(BATCH_EVERY):
                return
            try:
                self._send()
            except Exception:  # live output is best effort: never the worker's end
                log.exception("live output: sending failed")

    def _send(self) -> None:
        taps = {(t.job_id, t.attempt): t for e in self.attempts.running() if (t := e.tap)}
        chunks = [c for tap in taps.values() for c in tap.take()]
        if not chunks:
            self._tapped = bool(taps)
            return
        req = pb.OutputRequest(
            name=self.session.cfg.name,
            session=self.session.id,
            chunks=[wire_live.chunk_to_pb(c) for c in chunks],
        )
        self.sends += 1
        try:
            resp = self.session.stub.SendOutput(req, timeout=SEND_TIMEOUT)
        except grpc.RpcError as e:
            log.debug("live output not sent: %s", e.code())
            return
        for lease in resp.unfollowed:
            exe = self.attempts.get(lease.job_id, lease.attempt)
            if exe is not None:
                exe.tap = None
