"""The edge between domain types and the dts.v1 protobuf messages, and errors <-> gRPC status."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from itertools import pairwise
from operator import attrgetter
from typing import Final

import grpc

from dts import errors
from dts.controls import QueueInfo
from dts.domain import (
    ActivityBucket,
    Assignment,
    Attempt,
    Dependency,
    Job,
    JobSpec,
    JobStatus,
    Lease,
    Outcome,
    Result,
    StatCount,
    WorkerInfo,
    WorkerState,
    submitted_job,
)
from dts.limits import LIMITS, NO_LIMITS, Limits
from dts.v1 import dts_pb2 as pb

MAX_MESSAGE = 64 * 1024 * 1024
# Trailing metadata of an error the server itself answered with (its store is away, it is
# shutting down...), so that a client does not take it for a server it could not reach.
FROM_SERVER = (("dts-error", "server"),)


def grpc_options() -> list[tuple[str, int]]:
    """Message size limits and keepalive, so a half-open connection is noticed."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        # a server that died or was cut off is noticed within seconds (then a client or worker
        # given several servers moves on); the server allows pings this often
        ("grpc.keepalive_time_ms", 2_000),
        ("grpc.keepalive_timeout_ms", 2_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        # reconnect quickly after an outage: gRPC's own default backs off to 2 minutes, and
        # its backoff must not add to the callers' own (dts.backoff, capped at 5 s)
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1_000),
    ]


STATUS_TO_PB = {
    JobStatus.WAITING: pb.JOB_STATUS_WAITING,
    JobStatus.SCHEDULED: pb.JOB_STATUS_SCHEDULED,
    JobStatus.QUEUED: pb.JOB_STATUS_QUEUED,
    JobStatus.RUNNING: pb.JOB_STATUS_RUNNING,
    JobStatus.SUCCEEDED: pb.JOB_STATUS_SUCCEEDED,
    JobStatus.FAILED: pb.JOB_STATUS_FAILED,
    JobStatus.CANCELLED: pb.JOB_STATUS_CANCELLED,
}
STATUS_FROM_PB = {v: k for k, v in STATUS_TO_PB.items()}

OUTCOME_TO_PB = {
    Outcome.RUNNING: pb.OUTCOME_UNSPECIFIED,
    Outcome.SUCCEEDED: pb.OUTCOME_SUCCEEDED,
    Outcome.FAILED: pb.OUTCOME_FAILED,
    Outcome.TIMED_OUT: pb.OUTCOME_TIMED_OUT,
    Outcome.LOST: pb.OUTCOME_LOST,
    Outcome.CANCELLED: pb.OUTCOME_CANCELLED,
    Outcome.RELEASED: pb.OUTCOME_RELEASED,
}
OUTCOME_FROM_PB = {v: k for k, v in OUTCOME_TO_PB.items()}


def status_from_pb(value: int) -> JobStatus:
    try:
        return STATUS_FROM_PB[value]  # type: ignore[index]
    except KeyError:
        raise errors.InvalidArgument(f"unknown job status {value}") from None


def outcome_from_pb(value: int) -> Outcome:
    try:
        return OUTCOME_FROM_PB[value]  # type: ignore[index]
    except KeyError:
        raise errors.InvalidArgument(f"unknown outcome {value}") from None


# ---- specs and jobs ---------------------------------------------------------------------------


def spec_to_pb(spec: JobSpec) -> pb.JobSpec:
    msg = pb.JobSpec(
        argv=list(spec.argv),
        shell=spec.shell,
        queue=spec.queue,
        priority=spec.priority,
        delay=spec.delay,
        env=dict(spec.env),
        cwd=spec.cwd,
        name=spec.name,
        unique=spec.unique,
    )
    if spec.waits:
        msg.after.extend(spec.after)
        msg.after_finished.extend(spec.after_finished)
        msg.after_steps.extend(pb.StepRef(index=i) for i in spec.steps)
        msg.after_steps.extend(pb.StepRef(index=i, finished=True) for i in spec.steps_finished)
    if spec.limits.any:
        msg.limits.CopyFrom(limits_to_pb(spec.limits))
    if spec.max_retries is not None:
        msg.max_retries = spec.max_retries
    if spec.backoff is not None:
        msg.backoff = spec.backoff
    if spec.timeout is not None:
        msg.timeout = spec.timeout
    return msg


def spec_from_pb(msg: pb.JobSpec) -> JobSpec:
    return JobSpec(
        argv=tuple(msg.argv),
        shell=msg.shell,
        queue=msg.queue or "default",
        priority=msg.priority,
        max_retries=msg.max_retries if msg.HasField("max_retries") else None,
        backoff=msg.backoff if msg.HasField("backoff") else None,
        timeout=msg.timeout if msg.HasField("timeout") else None,
        delay=msg.delay,
        env=tuple(sorted(msg.env.items())),
        cwd=msg.cwd,
        name=msg.name,
        limits=limits_from_pb(msg.limits) if msg.HasField("limits") else NO_LIMITS,
        unique=msg.unique,
        after=tuple(msg.after),
        after_finished=tuple(msg.after_finished),
        steps=tuple(r.index for r in msg.after_steps if not r.finished),
        steps_finished=tuple(r.index for r in msg.after_steps if r.finished),
    )


LIMITS_PB_FIELDS: Final = tuple(f.wire for f in LIMITS)  # in the order of Limits' fields
_pb_limit_values: Final[Callable[[pb.Limits], tuple[int, ...]]] = attrgetter(*LIMITS_PB_FIELDS)


def limits_to_pb(limits: Limits) -> pb.Limits:
    msg = pb.Limits()
    for name, value in zip(LIMITS_PB_FIELDS, limits.values, strict=True):
        setattr(msg, name, value)  # cheaper than a dict of keyword arguments
    return msg


def limits_from_pb(msg: pb.Limits) -> Limits:
    return Limits(*_pb_limit_values(msg))


def as_received(spec: JobSpec) -> JobSpec:
    """`spec` as the server reads it off the wire: environment sorted by name (one entry a
    name), an empty queue name as the default queue."""
    if (not spec.env or _sorted_unique(spec.env)) and spec.queue:
        return spec
    return replace(spec, env=tuple(sorted(dict(spec.env).items())), queue=spec.queue or "default")


def _sorted_unique(env: tuple[tuple[str, str], ...]) -> bool:
    return all(a[0] < b[0] for a, b in pairwise(env))


def submitted_jobs(specs: Sequence[JobSpec], resp: pb.SubmitResponse) -> list[Job]:
    """The jobs a Submit created: from the answer's whole jobs, or (ids_only) rebuilt from
    what was sent, the ids, the submit time and the server's defaults; a job the answer says
    existed already (a unique key) is the one it sends whole, not rebuilt from the spec."""
    if resp.jobs or not resp.ids:
        return [job_from_pb(j) for j in resp.jobs]
    if len(resp.ids) != len(specs):
        raise errors.Internal(f"server answered {len(resp.ids)} ids for {len(specs)} jobs")
    retries, backoff, timeout = resp.default_retries, resp.default_backoff, resp.default_timeout
    found: dict[int, list[Job]] = {}
    for msg in resp.existing:
        found.setdefault(msg.id, []).append(job_from_pb(msg))
    # a job made by this submit is answered at its first position; found (existing) at the
    # others, and at all of them when it was there before: `existing` has one per such position
    left = Counter(resp.ids)
    jobs = []
    for job_id, spec in zip(resp.ids, specs, strict=True):
        was_there = found.get(job_id, [])
        if len(was_there) >= left[job_id]:
            jobs.append(was_there.pop())
        else:
            spec = as_received(spec).with_defaults(retries, backoff, timeout)
            jobs.append(submitted_job(job_id, spec, resp.created_at))
        left[job_id] -= 1
    return jobs


def job_to_pb(job: Job) -> pb.Job:
    msg = pb.Job(
        id=job.id,
        spec=spec_to_pb(job.spec),
        status=STATUS_TO_PB[job.status],
        attempts=job.attempts,
        error=job.error,
        worker=job.worker,
        created_at=job.created_at,
        started_at=job.started_at or 0.0,
        finished_at=job.finished_at or 0.0,
        run_at=job.run_at or 0.0,
        existing=job.existing,
        schedule=job.schedule,
        due_at=job.due_at or 0.0,
    )
    if job.exit_code is not None:
        msg.exit_code = job.exit_code
    msg.waits_for.extend(map(dependency_to_pb, job.waits_for))
    msg.waited_by.extend(map(dependency_to_pb, job.waited_by))
    return msg


def dependency_to_pb(d: Dependency) -> pb.Dependency:
    status = STATUS_TO_PB[d.status] if d.status else pb.JOB_STATUS_UNSPECIFIED
    return pb.Dependency(job_id=d.job_id, status=status, finished=d.finished)


def dependency_from_pb(msg: pb.Dependency) -> Dependency:
    status = STATUS_FROM_PB.get(msg.status)  # type: ignore[call-overload]
    return Dependency(msg.job_id, status, msg.finished)


def job_from_pb(msg: pb.Job) -> Job:
    return Job(
        id=msg.id,
        spec=spec_from_pb(msg.spec),
        status=status_from_pb(msg.status),
        attempts=msg.attempts,
        exit_code=msg.exit_code if msg.HasField("exit_code") else None,
        error=msg.error,
        worker=msg.worker,
        created_at=msg.created_at,
        started_at=msg.started_at or None,
        finished_at=msg.finished_at or None,
        run_at=msg.run_at or None,
        existing=msg.existing,
        schedule=msg.schedule,
        due_at=msg.due_at or None,
        waits_for=tuple(map(dependency_from_pb, msg.waits_for)),
        waited_by=tuple(map(dependency_from_pb, msg.waited_by)),
    )


def attempt_to_pb(a: Attempt) -> pb.Attempt:
    msg = pb.Attempt(
        job_id=a.job_id,
        attempt=a.attempt,
        worker=a.worker,
        started_at=a.started_at,
        finished_at=a.finished_at or 0.0,
        outcome=OUTCOME_TO_PB[a.outcome],
        error=a.error,
        stdout_bytes=a.stdout_bytes,
        stderr_bytes=a.stderr_bytes,
        ran_from=a.ran_from or 0.0,
        ran_until=a.ran_until or 0.0,
    )
    if a.exit_code is not None:
        msg.exit_code = a.exit_code
    return msg


def attempt_from_pb(msg: pb.Attempt) -> Attempt:
    return Attempt(
        job_id=msg.job_id,
        attempt=msg.attempt,
        worker=msg.worker,
        started_at=msg.started_at,
        finished_at=msg.finished_at or None,
        exit_code=msg.exit_code if msg.HasField("exit_code") else None,
        outcome=outcome_from_pb(msg.outcome),
        error=msg.error,
        stdout_bytes=msg.stdout_bytes,
        stderr_bytes=msg.stderr_bytes,
        ran_from=msg.ran_from or None,
        ran_until=msg.ran_until or None,
    )


def worker_to_pb(w: WorkerInfo) -> pb.Worker:
    return pb.Worker(
        name=w.name,
        host=w.host,
        pid=w.pid,
        state=w.state.value,
        running=w.running,
        concurrency=w.concurrency,
        queues=list(w.queues),
        registered_at=w.registered_at,
        last_heartbeat=w.last_heartbeat,
        server=w.server,
    )


def worker_from_pb(msg: pb.Worker) -> WorkerInfo:
    try:
        state = WorkerState(msg.state)
    except ValueError:
        raise errors.InvalidArgument(f"unknown worker state {msg.state!r}") from None
    return WorkerInfo(
        msg.name,
        msg.host,
        msg.pid,
        "",
        msg.concurrency,
        tuple(msg.queues),
        state,
        msg.running,
        msg.registered_at,
        msg.last_heartbeat,
        server=msg.server,
    )


def stat_to_pb(s: StatCount) -> pb.StatCount:
    return pb.StatCount(queue=s.queue, status=STATUS_TO_PB[s.status], count=s.count)


def stat_from_pb(msg: pb.StatCount) -> StatCount:
    return StatCount(msg.queue, status_from_pb(msg.status), msg.count)


def activity_to_pb(b: ActivityBucket) -> pb.ActivityBucket:
    return pb.ActivityBucket(
        start=b.start, succeeded=b.succeeded, failed=b.failed, cancelled=b.cancelled
    )


def activity_from_pb(msg: pb.ActivityBucket) -> ActivityBucket:
    return ActivityBucket(msg.start, msg.succeeded, msg.failed, msg.cancelled)


def queue_info_to_pb(q: QueueInfo) -> pb.QueueInfo:
    msg = pb.QueueInfo(
        name=q.name,
        queued=q.queued,
        running=q.running,
        scheduled=q.scheduled,
        waiting=q.waiting,
        paused=q.paused,
        workers=list(q.workers),
    )
    if q.limit is not None:
        msg.limit = q.limit
    return msg


def queue_info_from_pb(msg: pb.QueueInfo) -> QueueInfo:
    limit = msg.limit if msg.HasField("limit") else None
    return QueueInfo(
        msg.name,
        msg.queued,
        msg.running,
        msg.scheduled,
        msg.waiting,
        msg.paused,
        limit,
        tuple(msg.workers),
    )


# ---- worker protocol --------------------------------------------------------------------------


def lease_to_pb(lease: Lease) -> pb.Lease:
    return pb.Lease(job_id=lease.job_id, attempt=lease.attempt)


def lease_from_pb(msg: pb.Lease) -> Lease:
    return Lease(msg.job_id, msg.attempt)


def assignment_to_pb(a: Assignment) -> pb.Assignment:
    return pb.Assignment(job_id=a.job_id, attempt=a.attempt, spec=spec_to_pb(a.spec))


def assignment_from_pb(msg: pb.Assignment) -> Assignment:
    return Assignment(msg.job_id, msg.attempt, spec_from_pb(msg.spec))


def result_to_pb(r: Result) -> pb.Result:
    msg = pb.Result(
        job_id=r.job_id,
        attempt=r.attempt,
        outcome=OUTCOME_TO_PB[r.outcome],
        error=r.error,
        stdout=r.stdout,
        stderr=r.stderr,
        started_at=r.started_at,
        finished_at=r.finished_at,
    )
    if r.exit_code is not None:
        msg.exit_code = r.exit_code
    return msg


def result_from_pb(msg: pb.Result) -> Result:
    return Result(
        job_id=msg.job_id,
        attempt=msg.attempt,
        outcome=outcome_from_pb(msg.outcome),
        exit_code=msg.exit_code if msg.HasField("exit_code") else None,
        error=msg.error,
        stdout=msg.stdout,
        stderr=msg.stderr,
        started_at=msg.started_at,
        finished_at=msg.finished_at,
    )


# ---- errors -----------------------------------------------------------------------------------


def status_code(err: errors.DtsError) -> grpc.StatusCode:
    """The gRPC status an error travels as."""
    return grpc.StatusCode[err.code]


def _from_server(e: grpc.RpcError) -> bool:
    trailing = getattr(e, "trailing_metadata", None)
    try:
        return any(tuple(item) == FROM_SERVER[0] for item in (trailing() if trailing else ()) or ())
    except Exception:  # a call that never reached a server has no trailers to give
        return False


def error_from_rpc(e: grpc.RpcError, address: str) -> errors.DtsError:
    """The dts error for a failed call (the receiving side of the one mapping)."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = (e.details() if hasattr(e, "details") else "") or str(code)
    if code is grpc.StatusCode.UNAVAILABLE:
        if _from_server(e):
            return errors.Unavailable(f"dts-server at {address}: {details}")
        return errors.Unavailable(f"cannot reach dts-server at {address}: {details}")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.DeadlineExceeded(f"dts-server at {address} did not answer in time")
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return errors.Unauthenticated(f"dts-server at {address} refused the credentials: {details}")
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return errors.PermissionDenied(f"dts-server at {address} does not allow it: {details}")
    return errors.from_code(code.name, details)
