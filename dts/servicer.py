"""The gRPC servicers: unpack a request, call the coordinator, pack the answer. No rules here."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from dts import wire
from dts.coordinator import Coordinator
from dts.errors import DtsError, InvalidArgument, UnknownSession
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
        except DtsError as e:
            context.abort(wire.status_code(e), e.message)
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal server error (see the server log)")

    return wrapper  # type: ignore[return-value]


def _id(value: int) -> int:
    if value <= 0:
        raise InvalidArgument(f"job id must be a positive integer, got {value}")
    return value


class SchedulerServicer(pb_grpc.SchedulerServicer):
    """What users and scripts call."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator

    @rpc
    def Submit(self, request: pb.SubmitRequest, context: Any) -> pb.SubmitResponse:
        jobs = self.c.submit([wire.spec_from_pb(s) for s in request.jobs])
        if request.ids_only:
            cfg = self.c.cfg
            return pb.SubmitResponse(
                ids=[j.id for j in jobs],
                created_at=jobs[0].created_at,
                default_retries=cfg.default_retries,
                default_backoff=cfg.default_backoff,
                default_timeout=cfg.default_timeout,
            )
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


class WorkerServicer(pb_grpc.WorkerServiceServicer):
    """What workers call."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator

    @rpc
    def Register(self, request: pb.RegisterRequest, context: Any) -> pb.RegisterResponse:
        session = self.c.register(
            request.name, request.host, request.pid, request.concurrency, list(request.queues)
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
