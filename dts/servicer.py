"""The gRPC servicers: unpack a request, call the coordinator, pack the answer. No rules here."""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import grpc

from dts import wire
from dts.auth import TokenAuth
from dts.coordinator import Coordinator
from dts.domain import Job
from dts.errors import DeadlineExceeded, DtsError, InvalidArgument, UnknownSession
from dts.v1 import dts_pb2 as pb
from dts.v1 import dts_pb2_grpc as pb_grpc

log = logging.getLogger("dts.servicer")

F = TypeVar("F", bound=Callable[..., Any])


def rpc(fn: F) -> F:
    """Turn DtsError into its gRPC status and anything unexpected into a logged INTERNAL."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Exception as e:
            _abort(e, fn.__name__, context)

    return wrapper  # type: ignore[return-value]


def _abort(e: Exception, name: str, context: grpc.ServicerContext) -> NoReturn:
    """End the call with the status of a dts error, or INTERNAL (logged) for anything else."""
    if isinstance(e, DtsError):
        context.abort(wire.status_code(e), e.message)
    log.exception("internal error in %s", name)
    context.abort(grpc.StatusCode.INTERNAL, "internal server error (see the server log)")


def stream_rpc(fn: F) -> F:
    """`rpc` for handlers that yield their answers."""

    @functools.wraps(fn)
    def wrapper(self: Any, requests: Any, context: grpc.ServicerContext) -> Any:
        try:
            yield from fn(self, requests, context)
        except Exception as e:
            _abort(e, fn.__name__, context)

    return wrapper  # type: ignore[return-value]


MAX_GROUP = 256  # submits of one stream stored in one transaction
STREAM_IDLE = 60.0  # seconds a SubmitStream may sit unused before the server ends it
END = object()  # the stream's requests are over (or the server is stopping)
Inbox = queue.SimpleQueue[object]


def _id(value: int) -> int:
    if value <= 0:
        raise InvalidArgument(f"job id must be a positive integer, got {value}")
    return value


class SchedulerServicer(pb_grpc.SchedulerServicer):
    """What users and scripts call."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator
        self._inboxes: set[Inbox] = set()
        self._lock = threading.Lock()
        self._ended = False

    def end_streams(self) -> None:
        """The server is stopping: answer what each open SubmitStream has read, then end it."""
        with self._lock:
            self._ended = True
            for inbox in self._inboxes:
                inbox.put(END)

    @stream_rpc
    def SubmitStream(
        self, requests: Iterator[pb.SubmitRequest], context: Any
    ) -> Iterator[pb.SubmitResponse]:
        """Submits answered in order. A reader thread takes requests off the wire as they come,
        so the ones that arrive while a group is being stored go together into the next
        group: one transaction, one commit."""
        inbox: Inbox = queue.SimpleQueue()
        with self._lock:
            self._inboxes.add(inbox)
            if self._ended:
                inbox.put(END)
        threading.Thread(
            target=_read_into, args=(requests, inbox), name="dts-submit-reader", daemon=True
        ).start()
        try:
            while True:
                try:
                    first = inbox.get(timeout=STREAM_IDLE)
                except queue.Empty:
                    raise DeadlineExceeded(f"submit stream idle for {STREAM_IDLE:g}s") from None
                group, last = _group(first, inbox)
                if group:
                    outcomes = self.c.store_submits(
                        [[wire.spec_from_pb(spec) for spec in req.jobs] for req in group]
                    )
                    self.c.queue_submitted(  # to the enqueuer thread, while we answer
                        [j for o in outcomes if not isinstance(o, DtsError) for j in o]
                    )
                    for outcome in outcomes:
                        yield _lean_answer(outcome, self.c)
                if last is END:
                    return
                if isinstance(last, DtsError):
                    raise last
        finally:
            with self._lock:
                self._inboxes.discard(inbox)

    @rpc
    def Submit(self, request: pb.SubmitRequest, context: Any) -> pb.SubmitResponse:
        jobs = self.c.submit([wire.spec_from_pb(s) for s in request.jobs])
        if request.ids_only:
            return _lean_answer(jobs, self.c)
        return pb.SubmitResponse(jobs=[wire.job_to_pb(j) for j in jobs])

    @rpc
    def GetJob(self, request: pb.JobRef, context: Any) -> pb.Job:
        return wire.job_to_pb(self.c.get(_id(request.id)))

    @rpc
    def WaitJob(self, request: pb.WaitRequest, context: Any) -> pb.Job:
        return wire.job_to_pb(self.c.wait(_id(request.id), request.timeout))

    @rpc
    def ListJobs(self, request: pb.ListJobsRequest, context: Any) -> pb.ListJobsResponse:
        status = wire.status_from_pb(request.status) if request.status else None
        jobs = self.c.list_jobs(status, request.queue, request.limit)
        return pb.ListJobsResponse(jobs=[wire.job_to_pb(j) for j in jobs])

    @rpc
    def GetHistory(self, request: pb.JobRef, context: Any) -> pb.HistoryResponse:
        attempts = self.c.history(_id(request.id))
        return pb.HistoryResponse(attempts=[wire.attempt_to_pb(a) for a in attempts])

    @rpc
    def GetLogs(self, request: pb.LogsRequest, context: Any) -> pb.LogsResponse:
        out = self.c.logs(_id(request.id), request.attempt)
        return pb.LogsResponse(attempt=out.attempt, stdout=out.stdout, stderr=out.stderr)

    @rpc
    def CancelJob(self, request: pb.JobRef, context: Any) -> pb.Job:
        return wire.job_to_pb(self.c.cancel(_id(request.id)))

    @rpc
    def RetryJob(self, request: pb.JobRef, context: Any) -> pb.Job:
        return wire.job_to_pb(self.c.retry(_id(request.id)))

    @rpc
    def ListWorkers(self, request: pb.ListWorkersRequest, context: Any) -> pb.ListWorkersResponse:
        return pb.ListWorkersResponse(workers=[wire.worker_to_pb(w) for w in self.c.workers()])

    @rpc
    def GetStats(self, request: pb.StatsRequest, context: Any) -> pb.StatsResponse:
        return pb.StatsResponse(counts=[wire.stat_to_pb(s) for s in self.c.stats()])


def _read_into(requests: Iterator[pb.SubmitRequest], inbox: Inbox) -> None:
    try:
        for req in requests:
            inbox.put(req)
    except DtsError as e:  # a request that does not parse (wire.DecodeGuard)
        inbox.put(e)
    except Exception:  # the call ended (cancelled, connection gone)
        pass
    inbox.put(END)


def _group(first: object, inbox: Inbox) -> tuple[list[pb.SubmitRequest], object]:
    """`first` and the requests already waiting behind it (up to MAX_GROUP); and what ended
    the group early if it was not a request (END or an error), else None."""
    group: list[pb.SubmitRequest] = []
    item: object = first
    while isinstance(item, pb.SubmitRequest):
        group.append(item)
        if len(group) >= MAX_GROUP:
            return group, None
        try:
            item = inbox.get_nowait()
        except queue.Empty:
            return group, None
    return group, item


def _lean_answer(outcome: list[Job] | DtsError, c: Coordinator) -> pb.SubmitResponse:
    if isinstance(outcome, DtsError):
        return pb.SubmitResponse(code=wire.status_code(outcome).value[0], message=outcome.message)
    cfg = c.cfg
    return pb.SubmitResponse(
        ids=[j.id for j in outcome],
        created_at=outcome[0].created_at,
        default_retries=cfg.default_retries,
        default_backoff=cfg.default_backoff,
        default_timeout=cfg.default_timeout,
    )


class WorkerServicer(pb_grpc.WorkerServiceServicer):
    """What workers call."""

    def __init__(self, coordinator: Coordinator, auth: TokenAuth | None = None) -> None:
        self.c = coordinator
        self.auth = auth

    @rpc
    def Register(self, request: pb.RegisterRequest, context: Any) -> pb.RegisterResponse:
        credential = self.auth.credential_id(context.invocation_metadata()) if self.auth else ""
        session = self.c.register(
            request.name,
            request.host,
            request.pid,
            request.concurrency,
            list(request.queues),
            credential,
        )
        lease = self.c.cfg.worker_timeout
        return pb.RegisterResponse(
            session=session,
            lease_seconds=lease,
            heartbeat_interval=min(1.0, lease / 4),
            key_prefix=self.c.cfg.key_prefix,
        )

    @rpc
    def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        leases = [wire.lease_from_pb(lease) for lease in request.leases]
        try:
            stale = self.c.heartbeat(request.name, request.session, leases, request.draining)
        except UnknownSession:
            return pb.HeartbeatResponse(reregister=True)
        return pb.HeartbeatResponse(cancel=[wire.lease_to_pb(s) for s in stale])

    @rpc
    def Exchange(self, request: pb.ExchangeRequest, context: Any) -> pb.ExchangeResponse:
        results = [wire.result_from_pb(r) for r in request.results]
        acks, assignments = self.c.exchange(
            request.name, request.session, results, list(request.claim)
        )
        return pb.ExchangeResponse(
            acks=[
                pb.Ack(job_id=r.job_id, attempt=r.attempt, accepted=ok, reason=why)
                for r, (ok, why) in zip(results, acks, strict=True)
            ],
            assignments=[wire.assignment_to_pb(a) for a in assignments],
        )

    @rpc
    def Unregister(self, request: pb.UnregisterRequest, context: Any) -> pb.UnregisterResponse:
        self.c.unregister(request.name, request.session)
        return pb.UnregisterResponse()
