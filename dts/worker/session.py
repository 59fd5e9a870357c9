"""The worker's conversation with the server: register, Exchange, heartbeat, retries, errors."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from dts import __version__, wire
from dts.backoff import Backoff
from dts.daemon.process import Signals
from dts.domain import Result
from dts.v1 import dts_pb2 as pb
from dts.v1 import dts_pb2_grpc as pb_grpc
from dts.worker.config import WorkerConfig
from dts.worker.ending import Ending
from dts.worker.holds import Holds
from dts.worker.link import Link

log = logging.getLogger("dts.worker")

RPC_TIMEOUT = 10.0
REGISTER_WAIT = 5.0  # seconds one registration call waits for the server to be reachable
FENCE_FRACTION = 0.8  # of the lease: kill our jobs when no renewal got through for this long
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
# CANCELLED too: the worker cancels none of its calls, so it comes from a server that stopped
# with the call under way (a restart): nothing to stop the worker for.
RETRYABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
)

T = TypeVar("T")


class Dismissed(Exception):
    """The server turned this worker away (credentials refused, or another process took its
    name). Already handled when raised: the worker is stopping."""


class Session:
    """One worker's session with the server, over `channel` (which it closes): its session id
    and the timings the server gave at registration. `registered(key_prefix)` is told of every
    registration."""

    def __init__(
        self,
        cfg: WorkerConfig,
        channel: grpc.Channel,
        signals: Signals,
        ending: Ending,
        registered: Callable[[str], None],
    ) -> None:
        self.cfg = cfg
        self.signals = signals
        self.ending = ending
        self.registered = registered
        self.channel = channel  # closed by close()
        self.stub = pb_grpc.WorkerServiceStub(self.channel)
        self.link = Link(f"server {cfg.server}")
        self.id = ""
        self.lease_seconds = 30.0
        self.heartbeat_interval = 1.0
        self.holds = Holds()  # queues the server says are paused or full

    # ---- timings derived from the lease -------------------------------------------------

    @property
    def fence_after(self) -> float:
        """Seconds without a lease renewal after which our jobs are killed: sooner than the
        server may hand them to another worker."""
        return self.lease_seconds * FENCE_FRACTION

    @property
    def heartbeat_timeout(self) -> float:
        """The longest one heartbeat call may wait."""
        return self.lease_seconds / 4

    @property
    def claim_patience(self) -> float:
        """Seconds a claim keeps trying without the server before its ids go back."""
        return min(2.0, self.lease_seconds / 2)

    # ---- the calls ----------------------------------------------------------------------

    def register(self) -> bool:
        """Register (again); False if the worker was stopped or turned away first."""
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
        self.id = resp.session
        self.lease_seconds = resp.lease_seconds
        self.heartbeat_interval = resp.heartbeat_interval
        self.registered(resp.key_prefix)
        log.info(
            "worker %s registered (dts %s, concurrency %d, queues %s)",
            self.cfg.name,
            __version__,
            self.cfg.concurrency,
            ",".join(self.cfg.queues),
        )
        return True

    def unregister(self) -> None:
        try:
            self.stub.Unregister(
                pb.UnregisterRequest(name=self.cfg.name, session=self.id), timeout=2
            )
        except grpc.RpcError as e:
            log.info("could not tell the server we stopped: %s", e.code())

    def request(self, results: list[Result], ids: list[int]) -> pb.ExchangeRequest:
        return pb.ExchangeRequest(
            name=self.cfg.name,
            session=self.id,
            results=[wire.result_to_pb(r) for r in results],
            claim=ids,
        )

    def send(self, req: pb.ExchangeRequest) -> grpc.Future[pb.ExchangeResponse]:
        """Send an Exchange without waiting for its answer (see `collect`)."""
        call: grpc.Future[pb.ExchangeResponse] = self.stub.Exchange.future(req, timeout=RPC_TIMEOUT)
        return call

    def collect(
        self, call: grpc.Future[pb.ExchangeResponse], req: pb.ExchangeRequest
    ) -> pb.ExchangeResponse | None:
        """The answer to an Exchange sent while the job ran; on failure, the patient
        synchronous path takes over (backoff, registering again, giving up claims)."""
        try:
            resp: pb.ExchangeResponse = call.result()
            self.link.ok()
            return resp
        except grpc.RpcError:
            return self.exchange(req)

    def exchange(self, req: pb.ExchangeRequest) -> pb.ExchangeResponse | None:
        """Report results and claim ids in one call. Claims are given up after a short
        while without the server (the ids go back to other workers); results are kept
        trying until a second stop signal."""

        if req.claim:
            return self._call(self._exchange_call(req), give_up_after=self.claim_patience)
        return self._call(self._exchange_call(req), until=lambda: self.signals.stops > 1)

    def exchange_once(self, req: pb.ExchangeRequest) -> pb.ExchangeResponse | None:
        """Exchange with one try at most while the server is away (the worker is stopping)."""
        return self._call(self._exchange_call(req), until=lambda: True)

    def _exchange_call(self, req: pb.ExchangeRequest) -> Callable[[], pb.ExchangeResponse]:
        def call() -> pb.ExchangeResponse:
            req.session = self.id  # it changes when we register again
            resp: pb.ExchangeResponse = self.stub.Exchange(req, timeout=RPC_TIMEOUT)
            return resp

        return call

    def heartbeat_request(self, leases: list[pb.Lease], draining: bool) -> pb.HeartbeatRequest:
        return pb.HeartbeatRequest(
            name=self.cfg.name, session=self.id, leases=leases, draining=draining
        )

    def heartbeat(self, req: pb.HeartbeatRequest, timeout: float) -> pb.HeartbeatResponse | None:
        """One heartbeat, no retry; None if it did not get through. Raises Dismissed when
        the server turned the worker away."""
        try:
            resp: pb.HeartbeatResponse = self.stub.Heartbeat(req, timeout=timeout)
        except grpc.RpcError as e:
            if self._dismissed(e):
                raise Dismissed from None
            self.link.down(e.details() or e.code())
            return None
        self.link.ok()
        return resp

    def close(self) -> None:
        self.channel.close()

    # ---- retries and errors -------------------------------------------------------------

    def _call(
        self,
        fn: Callable[[], T],
        give_up_after: float | None = None,
        until: Callable[[], bool] | None = None,
    ) -> T | None:
        """Call the server until it answers, with backoff. None when `until()` says stop
        (default: a stop signal), the server stayed away for `give_up_after` seconds, or it
        turned the worker away."""
        backoff = Backoff(base=0.1, cap=5.0)
        since = time.monotonic()
        stop = until or self.signals.stop.is_set
        while True:  # at least one try, even when already stopping
            try:
                result = fn()
                self.link.ok()
                return result
            except grpc.RpcError as e:
                if e.code() in RETRYABLE:
                    self.link.down(e.details() or e.code())
                    give_up = give_up_after is not None and (
                        time.monotonic() - since > give_up_after
                    )
                    if stop() or give_up:
                        return None
                    if e.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:  # that one waited
                        self._pause(backoff.next_delay(), stop)
                elif self._dismissed(e):
                    return None
                elif e.code() is grpc.StatusCode.FAILED_PRECONDITION and self.id:
                    log.warning("server does not know session: %s; registering again", e.details())
                    if not self.register():
                        return None
                else:
                    raise wire.error_from_rpc(e, self.cfg.server) from None

    def _pause(self, delay: float, stop: Callable[[], bool]) -> None:
        """Sleep `delay`, cut short when the server is back or `stop()` turns true."""
        end = time.monotonic() + delay
        while not stop() and time.monotonic() < end:
            if self.link.recovered.wait(min(0.1, max(0.0, end - time.monotonic()))):
                return

    def _dismissed(self, e: grpc.RpcError) -> bool:
        """Whether `e` turns the worker away; if so, says why once and stops the worker.

        Refused credentials: nothing we send will be accepted. Another live process registered
        under our name: stop, rather than fight over it."""
        if e.code() is grpc.StatusCode.ALREADY_EXISTS:
            if self.ending.exit_code == 0:
                log.error(
                    "%s; stopping this worker (give each worker a unique --name)", e.details() or ""
                )
            self.ending.dismissed("worker superseded")
            return True
        if e.code() in REFUSED:
            if self.ending.exit_code == 0:
                log.error(
                    "server %s refused this worker's credentials (%s): %s; stopping",
                    self.cfg.server,
                    e.code().name,
                    e.details(),
                )
            self.ending.dismissed("worker credentials refused")
            return True
        return False
